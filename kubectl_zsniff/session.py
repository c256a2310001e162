"""One capture from start to end: target, names, sinks, injection, stream, clean-up.

Core code: progress goes through the Reporter; nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from .capture import CaptureStream, CaptureSummary, OutputPipeline, Reporter, check_filter_locally
from .errors import ExitStatus, ZsniffError
from .inject import check_capturable, describe_pod, ensure_capture_container, get_pod
from .kube import load_client
from .names import NameBook
from .options import CaptureOptions, OutputFormat
from .sinks import Sink


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
        from .sinks.wireshark import find_wireshark

        find_wireshark(out.wireshark_path)
    if out.zeek_dir is not None:
        from .sinks.zeek import find_zeek

        find_zeek()
    if out.view:
        from .view import require_tshark

        require_tshark()


def open_sinks(opts: CaptureOptions, pod: Any, book: NameBook | None) -> list[Sink]:
    out = opts.output
    sinks: list[Sink] = []
    try:
        if out.path is not None:
            if out.to_stdout:
                from .sinks.file import StdoutSink

                sinks.append(StdoutSink(out.fmt.value))
            else:
                from .sinks.file import FileSink

                sinks.append(FileSink(out.path, out.fmt.value))
        if out.wireshark:
            from .sinks.wireshark import WiresharkSink

            sinks.append(WiresharkSink(f"{pod.namespace}/{pod.name}", out.wireshark_path))
        if out.zeek_dir is not None:
            from .sinks.zeek import ZeekSink

            zeek = ZeekSink(out.zeek_dir, book, extra_args=list(out.zeek_scripts))
            zeek.start()
            sinks.append(zeek)
        if out.view:
            from .sinks.view import ViewSink

            view = ViewSink()
            sinks.append(view)
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        raise
    return sinks


def run_capture(opts: CaptureOptions, reporter: Reporter) -> CaptureSummary:
    check_tools(opts)
    check_filter_locally(opts.tcpdump)
    kube = load_client(opts.kube)
    namespace = kube.namespace
    pod = get_pod(kube, namespace, opts.target.pod)
    info = describe_pod(pod)
    target_container = check_capturable(info, opts.target.container)

    book: NameBook | None = None
    if opts.names:
        book = NameBook()
        missing = book.load(kube, namespace)
        if missing:
            reporter.progress("names limited: not allowed to list " + ", ".join(missing))

    sinks: list[Sink] = []
    wrote_anything = False
    try:
        sinks = open_sinks(opts, info, book)
        container = ensure_capture_container(
            kube, pod, target_container, opts.inject, reporter.progress
        )
        if book is not None:
            # Only now: the watches resume from the listed resourceVersion, so nothing is
            # missed, and a failure before this point exits with no watch thread mid-request
            # (a daemon thread inside OpenSSL at interpreter exit aborts the process).
            book.start_watching(kube, namespace)
        endpoint = kube.endpoint()
        pipeline = OutputPipeline(
            sinks, info, container.name, kube.context_name, opts.tcpdump, opts.limits, book
        )
        stream = CaptureStream(
            endpoint, info, container.name, opts.tcpdump, opts.limits, pipeline, reporter
        )
        reporter.progress(
            f"capturing {info.namespace}/{info.name} on {opts.tcpdump.interface}"
            + (f" ({opts.tcpdump.bpf_filter})" if opts.tcpdump.bpf_filter else "")
        )
        summary = asyncio.run(stream.run())
        wrote_anything = pipeline.output_bytes > 0
        summary.sink_results = _close_sinks(pipeline.sinks, summary)
        sinks = []
        return summary
    finally:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        if book is not None:
            book.stop()
        out = opts.output.path
        if not wrote_anything and out is not None and not opts.output.to_stdout:
            # Nothing captured because we failed before the stream: leave no empty file.
            with contextlib.suppress(OSError):
                if out.exists() and out.stat().st_size == 0:
                    out.unlink()


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


__all__ = ["run_capture", "output_format_for", "ExitStatus"]
