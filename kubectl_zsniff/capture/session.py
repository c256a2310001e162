"""One capture from start to end: target, names, sinks, injection, stream, clean-up.

Core code: progress goes through the Reporter; nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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
    PodInfo,
    describe_pod,
    ensure_capture_container,
    namespace_psa_level,
    preflight_refusal,
)
from kubectl_zsniff.kube.namewatch import NameWatcher
from kubectl_zsniff.kube.nodecapture import CONTAINER as NODE_CONTAINER
from kubectl_zsniff.kube.nodecapture import (
    create_node_pod,
    delete_node_pod,
    psa_refusal,
    read_node,
)
from kubectl_zsniff.kube.targets import (
    NODE,
    Resolution,
    Target,
    host_network_note,
    parse_targets,
    resolve_targets,
)
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.options import CaptureOptions, OutputFormat
from kubectl_zsniff.sinks import Sink
from kubectl_zsniff.sinks.file import refuse_overwrite

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
                sinks.append(StdoutSink(out.fmt.value, stdout))
            elif out.rotation.active:
                from kubectl_zsniff.sinks.rotate import RotatingFileSink

                sinks.append(RotatingFileSink(out.path, out.rotation))
            else:
                from kubectl_zsniff.sinks.file import FileSink

                sinks.append(FileSink(out.path, out.fmt.value))
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
            discard = getattr(sink, "discard_if_empty", None)
            if discard is not None:
                discard()
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
    if opts.output.rotation.active and opts.output.path is not None:
        from kubectl_zsniff.sinks.rotate import refuse_rotated_overwrite

        refuse_rotated_overwrite(opts.output.path, opts.output.force)
    elif opts.output.path is not None and not opts.output.to_stdout:
        refuse_overwrite(opts.output.path, opts.output.force)
    if opts.output.zeek_dir is not None:
        from kubectl_zsniff.sinks.zeek import refuse_used_directory

        refuse_used_directory(opts.output.zeek_dir)
    for note in output_notes(opts):
        reporter.progress(note)
    check_tools(opts)
    check_filter_locally(opts.tcpdump)
    kube = load_client(opts.kube)
    namespace = kube.namespace
    target = opts.target
    node_name = next((r.name for r in parse_targets(target.pods) if r.kind is NODE), None)
    node: JSON | None = None
    capture_ns = target.capture_namespace or namespace
    if node_name is None:
        resolution = resolve_targets(
            kube, namespace, target.pods, target.container, target.selector,
            target.all_namespaces, target.max_pods, reporter.progress,
        )
        targets = resolution.targets
        for note in filter(None, map(host_network_note, targets)):
            reporter.progress(note)
        levels = _psa_levels(kube, targets)
        targets = _preflight(targets, levels, opts, reporter)
    else:
        # Everything that can refuse a node capture, before its pod is made.
        node = read_node(kube, node_name)
        refusal = psa_refusal(capture_ns, namespace_psa_level(kube, capture_ns))
        if refusal is not None:
            raise refusal
        resolution, targets, levels = Resolution([], []), [], {}
    infos = [t.info for t in targets]
    many = len(targets) > 1
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

    book: NameBook | None = None
    watcher: NameWatcher | None = None
    if opts.names:
        book = NameBook()
        watcher = NameWatcher(book, kube, namespace)
        missing = watcher.load()
        if missing:
            reporter.progress("names limited: not allowed to list " + ", ".join(missing))

    sinks: list[Sink] = []
    file_sink: Any = None  # a FileSink or a RotatingFileSink: removed if left empty
    following: Following | None = None
    wrote_anything = False
    node_pod: str | None = None
    try:
        title = f"node/{node_name}" if node_name else _title(infos, target.selector)
        sinks = open_sinks(opts, title, book, stdout, kube.context_name)
        file_sink = next((s for s in sinks if hasattr(s, "discard_if_empty")), None)
        if node is not None:
            made = create_node_pod(kube, capture_ns, node, opts.inject, reporter.progress)
            node_pod = str(field(made, "metadata", "name"))
            # Named after the node, not its capture pod: the node's traffic is what it holds.
            infos = [replace(describe_pod(made), label=f"node/{node_name}")]
            containers = [NODE_CONTAINER]
        else:
            containers = _ensure_containers(kube, targets, opts, reporter, many, levels)
        if watcher is not None:
            # Only now: the watches resume from the listed resourceVersion, so nothing is
            # missed, and a failure before this point exits with no watch thread mid-request
            # (a daemon thread inside OpenSSL at interpreter exit aborts the process).
            watcher.start()
        endpoint = kube.endpoint()
        pipeline = OutputPipeline(
            sinks, infos, containers, kube.context_name, opts.tcpdump, opts.limits, book
        )
        if (many or resolution.sources) and opts.output.reorder_window > 0:
            pipeline.merge_in_time_order(int(opts.output.reorder_window * 1e9))
        if (many or resolution.sources) and opts.output.dedup:
            pipeline.deduplicate()
        run = CaptureRun(endpoint, pipeline, opts.tcpdump, opts.limits, reporter,
                         opts.reconnect_for)
        if resolution.sources:
            from kubectl_zsniff.capture.follow import Following

            following = Following(kube, run, pipeline, opts, levels, reporter,
                                  resolution.sources)
        reporter.progress(
            f"capturing {', '.join(i.title for i in infos)} "
            f"on {opts.tcpdump.interface}"
            + (f" ({opts.tcpdump.bpf_filter})" if opts.tcpdump.bpf_filter else "")
        )
        try:
            summary = asyncio.run(run.run())
        finally:
            if following is not None:
                following.stop()
        if watcher is not None and watcher.errors:
            summary.notes.append(_watch_note(watcher.errors))
        wrote_anything = pipeline.output_bytes > 0
        # Every sink opened, also those the pipeline dropped (a reader gone, a stall): each
        # must be closed, Zeek above all, which then finishes and has its logs named.
        summary.sink_results = _close_sinks(sinks, summary)
        sinks = []
        if node_pod is not None:
            pod_name, node_pod = node_pod, None
            try:
                delete_node_pod(kube, capture_ns, pod_name, reporter.progress)
            except ZsniffError as err:
                summary.notes.append(err.message)
                if summary.error is None:
                    summary.error = err
                    summary.exit_status = err.status
        return summary
    finally:
        if node_pod is not None:
            # A failure or Ctrl-C before the capture's end: the pod goes all the same. A
            # failing deletion is said, and the error on its way out stays the one reported.
            try:
                delete_node_pod(kube, capture_ns, node_pod, reporter.progress)
            except ZsniffError as err:
                reporter.progress(f"{err.message}; {err.hint}")
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        if watcher is not None:
            watcher.stop()
        if not wrote_anything and file_sink is not None:
            # Nothing captured because we failed before the stream: leave no empty file.
            file_sink.discard_if_empty()


def _watch_note(errors: list[str]) -> str:
    times = f"{len(errors)} times" if len(errors) > 1 else "once"
    return (f"the watch of the cluster's names failed {times} (last: {errors[-1]}) and was "
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


def _close_sinks(sinks: list[Sink], summary: CaptureSummary) -> list[tuple[str, Any]]:
    results: list[tuple[str, Any]] = []
    for sink in sinks:
        try:
            results.append((sink.label, sink.close()))
        except ZsniffError as err:
            summary.notes.append(f"{sink.label}: {err.message}")
            if summary.error is None:
                summary.error = err
                summary.exit_status = err.status
    return results


__all__ = ["run_capture", "output_format_for"]
