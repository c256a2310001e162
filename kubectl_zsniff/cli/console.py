"""Everything the user reads on stderr: progress, the live status line, the summary, errors.

stdout may carry capture bytes, so nothing here ever writes to it.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO

from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.sinks.results import BytesWritten, ClosedSink, RotationResult, ZeekSummary
from kubectl_zsniff.words import plural

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live

    from kubectl_zsniff.capture.run import CaptureSummary
    from kubectl_zsniff.options import CaptureOptions


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def status_line(packets: int, data_bytes: int, elapsed: float, dropped: int | None,
                reconnecting: int) -> list[str | tuple[str, str]]:
    """The live status line's parts (text, or text and style): what, how much, how fast,
    what the kernel dropped so far, and a pod's stream being reconnected."""
    rate = data_bytes / elapsed if elapsed > 0 else 0.0
    parts: list[str | tuple[str, str]] = [
        ("reconnecting " if reconnecting else "capturing ",
         "bold yellow" if reconnecting else "bold green"),
        f"{plural(packets, 'packet')}, {human_bytes(data_bytes)}, {human_bytes(rate)}/s, ",
    ]
    if dropped:
        parts.append((f"{dropped:,} dropped by the kernel", "bold red"))
        parts.append(", ")
    elif dropped == 0:
        parts.append("0 dropped, ")
    parts.append(f"{elapsed:.0f} s   (Ctrl-C stops)")
    return parts


class ConsoleReporter:
    def __init__(self, quiet: bool = False, stream: TextIO | None = None,
                 live: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = self.stream.isatty() and not quiet
        # The live status line redraws itself in place: only when nothing else writes to the
        # terminal meanwhile. The terminal view's rows come from another process (on stdout),
        # which the redraw cannot know of, and would glue onto it.
        self.live = live
        self._live: Live | None = None
        self._console: Console | None = None
        # One writer: several pods are prepared in parallel threads, and each line must reach
        # the terminal whole (print() writes the text and its newline separately).
        self._lock = threading.RLock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _rich(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
        return self._console

    def progress(self, message: str) -> None:
        if self.quiet:
            return
        if self.interactive:
            with self._lock:
                self._rich().print(f"[dim]zsniff:[/dim] {message}")
        else:
            self._line(f"zsniff: {message}")

    def stats(self, packets: int, data_bytes: int, elapsed: float, dropped: int | None = None,
              reconnecting: int = 0) -> None:
        if not self.interactive or not self.live:
            return
        from rich.live import Live
        from rich.text import Text

        line = Text.assemble(*status_line(packets, data_bytes, elapsed, dropped, reconnecting))
        with self._lock:
            if self._live is None:
                self._live = Live(line, console=self._rich(), transient=True, auto_refresh=False)
                self._live.start()
            self._live.update(line, refresh=True)

    def finish(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def summary(self, summary: CaptureSummary, opts: CaptureOptions) -> None:
        if self.quiet:
            return
        pods = summary.pods
        if len(pods) > 1:
            pod = f"{len(pods)} pods (" + ", ".join(
                f"{p.pod.title}: {p.packets:,}" for p in pods) + ")"
        else:
            pod = summary.pod.title
        drops = [p.report.dropped for p in pods]
        parts = [
            f"{plural(summary.packets, 'packet')} ({human_bytes(summary.data_bytes)}) from {pod} "
            f"in {summary.seconds:.1f} s; stopped: {summary.reason.value}",
        ]
        if any(d is not None for d in drops):
            parts.append(f"{sum(d or 0 for d in drops):,} dropped by the kernel")
        if summary.remote_stopped is True:
            where = "the pods" if len(pods) > 1 else "the pod"
            parts.append(f"tcpdump stopped in {where} (verified)")
        elif summary.remote_stopped is False:
            parts.append("WARNING: tcpdump may still run in the pod")
        out = opts.output
        # Writing the file failed (a full disk): the error line after this says what is on
        # disk; "wrote" would claim the file is complete.
        failed = (out.path is not None and summary.error is not None
                  and summary.reason.name == "OUTPUT_FAILED"
                  and out.path.stem in summary.error.message)
        if out.path is not None and not out.to_stdout and not out.rotation.active and not failed:
            if out.path.exists():
                parts.append(f"wrote {out.path} ({out.fmt.value})")
            else:
                parts.append(f"nothing captured, so no {out.path} was left")
        for closed in summary.sink_results:
            if failed and closed.label == "file":
                continue
            text = sink_result_text(closed)
            if text:
                parts.append(text)
        if summary.closed_sinks:
            parts.append("closed by the reader: " + ", ".join(summary.closed_sinks))
        message = "; ".join(parts)
        for note in summary.notes:
            message += f"\nzsniff: {note}"
        self._line(f"zsniff: {message}")
        dropped = sum(d or 0 for d in drops)
        if dropped:
            self._line(
                f"hint: the kernel dropped {plural(dropped, 'packet')} before tcpdump read them "
                f"(its buffer, -B, is {opts.tcpdump.buffer_kib:,} KiB): raise -B/--buffer-size, "
                "narrow the filter, or lower --snaplen")

    def error(self, err: ZsniffError) -> None:
        with self._lock:
            self._line(f"error: {err.message}")
            if err.hint:
                self._line(f"hint: {err.hint}")


def sink_result_text(closed: ClosedSink) -> str:
    """One sink's part of the summary; "" when it has nothing to add to the counts."""
    label, result = closed.label, closed.result
    if isinstance(result, BytesWritten):
        return ""
    if isinstance(result, RotationResult):
        files = result.files
        if not files:
            return "nothing captured, so no file was left"
        span = files[0].name if len(files) == 1 else f"{files[0].name} ... {files[-1].name}"
        removed = f" ({result.removed:,} older removed by --ring)" if result.removed else ""
        return f"wrote {plural(len(files), 'file')} {span} (pcapng){removed}"
    if isinstance(result, ZeekSummary):
        return _zeek_text(label, result)
    if result.dropped_packets:
        return (f"{label} skipped {result.dropped_packets:,} of "
                f"{plural(result.total_packets, 'packet')} to keep up (the file has them all)")
    return ""


def _zeek_text(label: str, result: ZeekSummary) -> str:
    files = result.files
    named = ", ".join(f.path.name for f in files) or "no logs"
    text = f"{label} logs in {result.directory}: {named}"
    if result.json_lines is not None:
        text = (f"{label}: {plural(result.json_lines, 'JSON line')} to {result.json_to}"
                + (f"; {text}" if files else ""))
    if result.counts is not None:
        text += f" (rows kept/dropped: {result.counts.text() or 'none'})"
    return text
