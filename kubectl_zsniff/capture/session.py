"""One capture from start to end: target, names, sinks, injection, stream, clean-up.

Core code: progress goes through the Reporter; nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kubectl_zsniff.capture.run import (
    CaptureRun,
    CaptureSummary,
    OutputPipeline,
    Reporter,
    check_filter_locally,
)
from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, field, load_client
from kubectl_zsniff.kube.container import (
    ensure_capture_container,
    namespace_psa_level,
    preflight_refusal,
)
from kubectl_zsniff.kube.namewatch import NameWatcher
from kubectl_zsniff.kube.nodecapture import CONTAINER as NODE_CONTAINER
from kubectl_zsniff.kube.nodecapture import (
    NodeAccess,
    create_node_pod,
    delete_node_pod,
    psa_refusal,
    read_node,
    refuse_missing_rights,
    tolerations_for,
)
from kubectl_zsniff.kube.pod import PodInfo, describe_pod
from kubectl_zsniff.kube.targets import (
    NODE,
    Resolution,
    Target,
    host_network_note,
    parse_targets,
    resolve_targets,
)
from kubectl_zsniff.kube.vianode import ViaNodePods
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.options import CaptureOptions, OutputFormat
from kubectl_zsniff.sinks import Sink
from kubectl_zsniff.sinks.file import refuse_overwrite
from kubectl_zsniff.sinks.results import ClosedSink

if TYPE_CHECKING:
    from kubectl_zsniff.capture.follow import Following


def output_format_for(path: Path | None, explicit: OutputFormat | None) -> OutputFormat:
    if explicit is not None:
        return explicit
    if path is not None and path.suffix.lower() in (".pcap", ".cap"):
        return OutputFormat.PCAP
    return OutputFormat.PCAPNG


def check_tools(opts: CaptureOptions) -> None:
    """Fail on a missing local tool before anything touches the cluster."""
    out = opts.output
    if out.wireshark:
        from kubectl_zsniff.sinks.wireshark import find_wireshark

        find_wireshark(out.wireshark_path)
    if out.zeek:
        from kubectl_zsniff.sinks.zeek import find_zeek

        find_zeek()
    if out.view:
        from kubectl_zsniff.view.render import require_tshark

        require_tshark()


def open_sinks(opts: CaptureOptions, title: str, book: NameBook | None,
               stdout: BinaryIO | None = None, context: str | None = None) -> list[Sink]:
    """The sinks the options ask for; `stdout` is where `-w -` writes (the caller's stream);
    `context`, the kubectl context, goes on every row of the --zeek-json stream."""
    out = opts.output
    sinks: list[Sink] = []
    try:
        if out.path is not None:
            if out.to_stdout:
                from kubectl_zsniff.sinks.file import StdoutSink

                if stdout is None:
                    raise ValueError("-w - needs the standard output stream")
                sinks.append(StdoutSink(out.fmt, stdout))
            elif out.rotation.active:
                from kubectl_zsniff.sinks.rotate import RotatingFileSink

                sinks.append(RotatingFileSink(out.path, out.rotation))
            else:
                from kubectl_zsniff.sinks.file import FileSink

                sinks.append(FileSink(out.path, out.fmt))
        if out.wireshark:
            from kubectl_zsniff.sinks.wireshark import WiresharkSink

            sinks.append(WiresharkSink(title, out.wireshark_path))
        if out.zeek:
            from kubectl_zsniff.sinks.zeek import ZeekSink

            # Workload columns when the cluster names any workload, as the offline `enrich`
            # decides for the same names: the finished logs then equal its output.
            workloads = book is not None and any(n.workload for n in book.current().values())
            zeek = ZeekSink(out.zeek_dir, book, extra_args=list(out.zeek_scripts),
                            json_target=out.zeek_json, json_stdout=stdout,
                            selection=out.zeek_selection,
                            context=context, workload_columns=workloads)
            zeek.start()
            sinks.append(zeek)
        if out.view:
            from kubectl_zsniff.sinks.view import ViewSink

            view = ViewSink()
            sinks.append(view)
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
            sink.discard_if_empty()
        raise
    return sinks


def output_notes(opts: CaptureOptions) -> list[str]:
    """What the user may not expect of the output they asked for."""
    out = opts.output
    notes: list[str] = []
    if out.path is None:
        return notes
    suffix = out.path.suffix.lower()
    said = {".pcap": OutputFormat.PCAP, ".cap": OutputFormat.PCAP,
            ".pcapng": OutputFormat.PCAPNG}.get(suffix)
    if not out.to_stdout and said is not None and said != out.fmt:
        notes.append(f"warning: writing {out.fmt.value} into {out.path.name} as --format "
                     f"asks, although its name says {said.value}")
    if out.fmt == OutputFormat.PCAP and opts.names:
        notes.append("note: classic pcap has no place for names, so the capture holds "
                     "addresses only; pcapng keeps the pod names (or: kubectl zsniff hosts "
                     "-o k8s.hosts, then tshark -H k8s.hosts -N n)")
    return notes


def run_capture(opts: CaptureOptions, reporter: Reporter,
                stdout: BinaryIO | None = None) -> CaptureSummary:
    _refuse_used_outputs(opts)
    for note in output_notes(opts):
        reporter.progress(note)
    check_tools(opts)
    check_filter_locally(opts.tcpdump)
    kube = load_client(opts.kube)
    plan = _plan(kube, opts, reporter)
    _say_zeek_dedup(opts, len(plan.targets) > 1, reporter)
    book, watcher = _load_names(kube, opts, reporter)

    sinks: list[Sink] = []
    opened: list[Sink] = []  # kept past the close: a file left empty is removed at the end
    wrote_anything = False
    capture_pods = _CapturePods(kube, plan.capture_namespace, opts, reporter.progress)
    try:
        title = (f"node/{plan.node_name}" if plan.node_name
                 else _title([t.info for t in plan.targets], opts.target.selector))
        sinks = opened = open_sinks(opts, title, book, stdout, kube.context_name)
        infos, containers = _lanes(kube, plan, capture_pods, opts, reporter)
        if watcher is not None:
            # Only now: the watches resume from the listed resourceVersion, so nothing is
            # missed, and a failure before this point exits with no watch thread mid-request
            # (a daemon thread inside OpenSSL at interpreter exit aborts the process).
            watcher.start()
        pipeline = OutputPipeline(
            sinks, infos, containers, kube.context_name, opts.tcpdump, opts.limits, book
        )
        summary = _stream(kube, pipeline, plan, capture_pods.via, opts, reporter)
        if watcher is not None and watcher.errors:
            summary.notes.append(_watch_note(watcher.error_count, watcher.errors[-1]))
        wrote_anything = pipeline.output_bytes > 0
        # Every sink opened, also those the pipeline dropped (a reader gone, a stall): each
        # must be closed, Zeek above all, which then finishes and has its logs named.
        summary.sink_results = _close_sinks(sinks, summary)
        sinks = []
        for err in capture_pods.delete():
            summary.notes.append(err.message)
            if summary.error is None:
                summary.error = err
                summary.exit_status = err.status
        return summary
    finally:
        # A failure or Ctrl-C before the capture's end: the capture pods go all the same. A
        # failing deletion is said, and the error on its way out stays the one reported.
        for err in capture_pods.delete():
            reporter.progress(f"{err.message}; {err.hint}")
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        if watcher is not None:
            watcher.stop()
        if not wrote_anything:
            # Nothing captured because we failed before the stream: leave no empty file.
            for sink in opened:
                sink.discard_if_empty()


def _load_names(kube: KubeClient, opts: CaptureOptions,
                reporter: Reporter) -> tuple[NameBook | None, NameWatcher | None]:
    """The cluster's names as listed now; the watcher that keeps them current, not started."""
    if not opts.names:
        return None, None
    book = NameBook()
    watcher = NameWatcher(book, kube, kube.namespace)
    missing = watcher.load()
    if missing:
        reporter.progress("names limited: not allowed to list " + ", ".join(missing))
    return book, watcher


def _lanes(kube: KubeClient, plan: _Plan, capture_pods: _CapturePods, opts: CaptureOptions,
           reporter: Reporter) -> tuple[list[PodInfo], list[str]]:
    """What each lane captures and the container tcpdump runs in, made ready to capture."""
    if plan.node is not None:
        return [capture_pods.on_node(plan.node)], [NODE_CONTAINER]
    many = len(plan.targets) > 1
    if capture_pods.via is not None:
        infos = _place_via_node(capture_pods.via, plan.targets, many)
        return infos, [NODE_CONTAINER] * len(infos)
    containers = _ensure_containers(kube, plan.targets, opts, reporter, many, plan.levels)
    return [t.info for t in plan.targets], containers


def _stream(kube: KubeClient, pipeline: OutputPipeline, plan: _Plan, via: ViaNodePods | None,
            opts: CaptureOptions, reporter: Reporter) -> CaptureSummary:
    """Capture until the end (a limit, a signal, the last pod gone), following workloads."""
    sources = plan.resolution.sources
    if (len(pipeline.lanes) > 1 or sources) and opts.output.reorder_window > 0:
        pipeline.merge_in_time_order(int(opts.output.reorder_window * 1e9))
    if (len(pipeline.lanes) > 1 or sources) and opts.output.dedup:
        pipeline.deduplicate()
    run = CaptureRun(kube.endpoint(), pipeline, opts.tcpdump, opts.limits, reporter,
                     opts.reconnect_for)
    following: Following | None = None
    if sources:
        from kubectl_zsniff.capture.follow import Following

        following = Following(kube, run, pipeline, opts, plan.levels, reporter, sources, via)
    reporter.progress(
        f"capturing {', '.join(lane.pod.title for lane in pipeline.lanes)} "
        f"on {opts.tcpdump.interface}"
        + (f" ({opts.tcpdump.bpf_filter})" if opts.tcpdump.bpf_filter else "")
        + (f" from capture pods in {plan.capture_namespace}" if via is not None else "")
    )
    try:
        return asyncio.run(run.run())
    finally:
        if following is not None:
            following.stop()


def _refuse_used_outputs(opts: CaptureOptions) -> None:
    """Refuse, before anything is asked of the cluster, outputs that would overwrite."""
    if opts.output.rotation.active and opts.output.path is not None:
        from kubectl_zsniff.sinks.rotate import refuse_rotated_overwrite

        refuse_rotated_overwrite(opts.output.path, opts.output.force)
    elif opts.output.path is not None and not opts.output.to_stdout:
        refuse_overwrite(opts.output.path, opts.output.force)
    if opts.output.zeek_dir is not None:
        from kubectl_zsniff.sinks.zeek import refuse_used_directory

        refuse_used_directory(opts.output.zeek_dir)


@dataclass(frozen=True)
class _Plan:
    """What is captured, with every check that can refuse it done before anything is made."""

    resolution: Resolution
    targets: list[Target]
    levels: dict[str, str | None]  # PodSecurity level per target namespace
    capture_namespace: str  # where node and --via-node capture pods are made
    node: JSON | None = None  # node/NAME, as read

    @property
    def node_name(self) -> str | None:
        return None if self.node is None else str(field(self.node, "metadata", "name"))


def _plan(kube: KubeClient, opts: CaptureOptions, reporter: Reporter) -> _Plan:
    target = opts.target
    capture_ns = target.capture_namespace or kube.namespace
    node_name = next((r.name for r in parse_targets(target.pods) if r.kind is NODE), None)
    if node_name is not None:
        node = read_node(kube, node_name)
        _refuse_capture_namespace(kube, capture_ns, NodeAccess.NETWORK)
        return _Plan(Resolution([], []), [], {}, capture_ns, node)
    resolution = resolve_targets(
        kube, kube.namespace, target.pods, target.container, target.selector,
        target.all_namespaces, target.max_pods, reporter.progress,
    )
    targets = resolution.targets
    for note in filter(None, map(host_network_note, targets)):
        reporter.progress(note)
    if target.via_node:
        # The pods are not changed, so their own namespaces' PodSecurity does not matter.
        _refuse_capture_namespace(kube, capture_ns, NodeAccess.PODS)
        return _Plan(resolution, targets, {}, capture_ns)
    levels = _psa_levels(kube, targets)
    return _Plan(resolution, _preflight(targets, levels, opts, reporter), levels, capture_ns)


def _refuse_capture_namespace(kube: KubeClient, namespace: str, access: NodeAccess) -> None:
    refusal = psa_refusal(namespace, namespace_psa_level(kube, namespace), access)
    if refusal is not None:
        raise refusal
    refuse_missing_rights(kube, namespace, access)


def _say_zeek_dedup(opts: CaptureOptions, many: bool, reporter: Reporter) -> None:
    if many and opts.output.zeek and not opts.output.dedup:
        # Each captured pod's stream carries the packets it sent and received: those between
        # two captured pods come twice unless the pipeline's dedup drops the copies.
        reporter.progress(
            "warning: --zeek with several pods and --no-dedup: a packet between two captured "
            "pods is in both ends' streams, so Zeek sees it twice (doubled bytes and packets, "
            "retransmissions, two dns.log rows per query); leave --no-dedup out")
    elif many and opts.output.zeek and opts.output.path is not None:
        reporter.progress(
            "--zeek: packets seen at both ends are written once, for Zeek and in "
            f"{'standard output' if opts.output.to_stdout else opts.output.path} alike "
            "(--no-dedup keeps both copies, and Zeek then counts them twice)")


class _CapturePods:
    """The pods this capture makes on nodes (node/NAME's, or --via-node's), to delete at the
    end whatever happens."""

    def __init__(self, kube: KubeClient, namespace: str, opts: CaptureOptions,
                 progress: Callable[[str], None]) -> None:
        self.kube = kube
        self.namespace = namespace
        self.opts = opts
        self.progress = progress
        self.node_pod: str | None = None
        self.via = (ViaNodePods(kube, namespace, opts.inject, progress)
                    if opts.target.via_node else None)

    def on_node(self, node: JSON) -> PodInfo:
        name = str(field(node, "metadata", "name"))
        made = create_node_pod(self.kube, self.namespace, name,
                               tolerations_for(field(node, "spec", "taints") or []),
                               self.opts.inject, self.progress)
        self.node_pod = str(field(made, "metadata", "name"))
        # Named after the node, not its capture pod: the node's traffic is what it holds.
        return replace(describe_pod(made), label=f"node/{name}")

    def delete(self) -> list[ZsniffError]:
        """Delete what is left to delete (again: nothing), each verified gone."""
        failures = self.via.delete_all() if self.via is not None else []
        if self.node_pod is not None:
            name, self.node_pod = self.node_pod, None
            try:
                delete_node_pod(self.kube, self.namespace, name, self.progress)
            except ZsniffError as err:
                failures.append(err)
        return failures


def _place_via_node(via: ViaNodePods, targets: list[Target], many: bool) -> list[PodInfo]:
    """Each target as captured from its node's capture pod (made on first need)."""
    placed = []
    for t in targets:
        try:
            placed.append(via.place(t.pod))
        except ZsniffError as err:
            if not many:
                raise
            raise ZsniffError(f"{t.info.namespace}/{t.info.name}: {err.message}", err.hint,
                              err.status) from err
    return placed


def _watch_note(count: int, last: str) -> str:
    times = f"{count:,} times" if count > 1 else "once"
    return (f"the watch of the cluster's names failed {times} (last: {last}) and was "
            "listed again each time; a name that changed in a gap was applied late")


def _title(infos: list[PodInfo], selector: str | None) -> str:
    if len(infos) == 1:
        return f"{infos[0].namespace}/{infos[0].name}"
    if selector:
        return f"{infos[0].namespace} -l {selector} ({len(infos)} pods)"
    return ", ".join(f"{i.namespace}/{i.name}" for i in infos)


def _psa_levels(kube: KubeClient, targets: list[Target]) -> dict[str, str | None]:
    """The enforced PodSecurity level of each target's namespace, read once per namespace."""
    return {ns: namespace_psa_level(kube, ns) for ns in {t.info.namespace for t in targets}}


def _preflight(
    targets: list[Target], levels: dict[str, str | None], opts: CaptureOptions,
    reporter: Reporter,
) -> list[Target]:
    """Every check that can refuse a pod, for all targets, before any pod is changed."""
    refused = [
        (t, err) for t in targets
        if (err := preflight_refusal(t.pod, levels.get(t.info.namespace), opts.inject))
    ]
    if not refused:
        return targets
    kept = [t for t in targets if all(t is not r for r, _ in refused)]
    if opts.target.skip_uncapturable and kept:
        reporter.progress("skipping " + "; ".join(
            f"{t.info.namespace}/{t.info.name} ({err.message})" for t, err in refused))
        return kept
    target, err = refused[0]
    if len(targets) > 1:
        names = ", ".join(f"{t.info.namespace}/{t.info.name}" for t, _ in refused)
        raise ZsniffError(
            f"{len(refused)} of {len(targets)} pods cannot be captured ({names}): {err.message}; "
            "no pod was changed",
            "add --skip-uncapturable to capture the others"
            + (" (none would be left)" if not kept else "") + f"; or: {err.hint}",
            err.status,
        )
    raise err


def _ensure_containers(
    kube: KubeClient, targets: list[Target], opts: CaptureOptions, reporter: Reporter,
    many: bool, levels: dict[str, str | None],
) -> list[str]:
    """A running capture container in every pod; several pods are prepared in parallel."""

    def one(t: Target) -> str:
        def progress(message: str) -> None:
            reporter.progress(f"{t.info.namespace}/{t.info.name}: {message}" if many else message)

        return ensure_capture_container(
            kube, t.pod, t.container, opts.inject, progress, levels.get(t.info.namespace)
        ).name

    if not many:
        return [one(targets[0])]
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        return list(pool.map(one, targets))


def _close_sinks(sinks: list[Sink], summary: CaptureSummary) -> list[ClosedSink]:
    results: list[ClosedSink] = []
    for sink in sinks:
        try:
            results.append(ClosedSink(sink.label, sink.close()))
        except ZsniffError as err:
            summary.notes.append(f"{sink.label}: {err.message}")
            if summary.error is None:
                summary.error = err
                summary.exit_status = err.status
    return results


__all__ = ["run_capture", "output_format_for"]
