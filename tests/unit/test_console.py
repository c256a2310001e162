"""What the user reads on stderr: whole lines, whatever the threads writing them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.capture.run import CaptureSummary, PodCapture, StopReason, TcpdumpReport
from kubectl_zsniff.cli.console import ConsoleReporter, sink_result_text
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.options import (
    CaptureOptions,
    KubeOptions,
    OutputOptions,
    TargetOptions,
    TcpdumpOptions,
)
from kubectl_zsniff.sinks.results import (
    BytesWritten,
    ClosedSink,
    RotationResult,
    ViewSummary,
    ZeekSummary,
)
from kubectl_zsniff.zeek.logs import FileSummary
from kubectl_zsniff.zeek.select import LogCounts, SelectionCounts


class _SlowStream:
    """A stderr that lets other threads run between two writes, as a real one may."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        time.sleep(0.0005)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_status_lines_of_several_pods_never_run_together() -> None:
    """Issue 9, defect 10: "...zsniff-7e8ab9zsniff: shop/web2: injected..." on stderr."""
    stream = _SlowStream()
    reporter = ConsoleReporter(stream=stream)  # type: ignore[arg-type]

    def pod(n: int) -> None:
        for i in range(30):
            reporter.progress(f"shop/web{n}: injected ephemeral container zsniff-{i:06x}")

    threads = [threading.Thread(target=pod, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reporter.error(ZsniffError("it failed", "do this instead", ExitStatus.CAPTURE_FAILED))
    lines = "".join(stream.chunks).split("\n")
    assert lines.pop() == ""
    assert len(lines) == 4 * 30 + 2
    for line in lines[:-2]:
        assert line.startswith("zsniff: shop/web") and line.count("zsniff") == 2, line
    assert lines[-2:] == ["error: it failed", "hint: do this instead"]


def _summary(dropped: list[int | None], tmp_path: Path) -> tuple[Any, CaptureOptions]:
    pods = []
    for n, drops in enumerate(dropped):
        info = PodInfo("shop", f"web{n}", "node-1", ("app",), "Running", (f"10.0.0.{n + 1}",))
        report = TcpdumpReport()
        report.feed(b"listening on eth0, link-type EN10MB (Ethernet), snapshot length 262144\n"
                    + (f"12 packets captured\n{drops} packets dropped by kernel\n".encode()
                       if drops is not None else b""))
        pods.append(PodCapture(info, "zsniff-1", report, packets=12, remote_stopped=True))
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"x")
    summary = CaptureSummary(pods, 12 * len(pods), 1200, 1500, 2.0, StopReason.DURATION,
                             ExitStatus.OK, 0, [], [], [])
    opts = CaptureOptions(KubeOptions(), TargetOptions(("web0",)),
                          tcpdump=TcpdumpOptions(buffer_kib=4096),
                          output=OutputOptions(path=out))
    return summary, opts


def test_the_summary_counts_kernel_drops_and_hints_at_the_buffer(tmp_path: Path) -> None:
    stream = _SlowStream()
    summary, opts = _summary([3, 4], tmp_path)
    ConsoleReporter(stream=stream).summary(summary, opts)  # type: ignore[arg-type]
    text = "".join(stream.chunks)
    assert "24 packets (1.2 kB) from 2 pods (shop/web0: 12, shop/web1: 12)" in text, text
    assert "7 dropped by the kernel" in text
    assert "tcpdump stopped in the pods (verified)" in text
    assert f"wrote {opts.output.path} (pcapng)" in text
    assert text.rstrip("\n").splitlines()[-1] == (
        "hint: the kernel dropped 7 packets before tcpdump read them (its buffer, -B, is "
        "4,096 KiB): raise -B/--buffer-size, narrow the filter, or lower --snaplen")


def test_no_drops_no_hint(tmp_path: Path) -> None:
    for dropped in ([0], [None]):
        stream = _SlowStream()
        summary, opts = _summary(dropped, tmp_path)
        ConsoleReporter(stream=stream).summary(summary, opts)  # type: ignore[arg-type]
        text = "".join(stream.chunks)
        assert "hint:" not in text, text
        assert ("0 dropped by the kernel" in text) == (dropped == [0]), text


# --- each sink's part of the summary, by the type its close() returns --------------------------

def _zeek(files: list[str], **extra: Any) -> ZeekSummary:
    return ZeekSummary(Path("/logs"), 0, 100, [FileSummary(Path("/logs/raw") / f) for f in files],
                       **extra)


def _counts(**logs: tuple[int, int]) -> SelectionCounts:
    counts = SelectionCounts()
    for path, (kept, dropped) in logs.items():
        counts.logs[path] = LogCounts(kept, dropped)
    return counts


@pytest.mark.parametrize(("closed", "expected"), [
    (ClosedSink("file", BytesWritten(1234)), ""),
    (ClosedSink("stdout", BytesWritten(0)), ""),
    (ClosedSink("Wireshark", BytesWritten(99)), ""),
    (ClosedSink("file", RotationResult([], 0, 0)), "nothing captured, so no file was left"),
    (ClosedSink("file", RotationResult([Path("/x/web-00001.pcapng")], 0, 10)),
     "wrote 1 file web-00001.pcapng (pcapng)"),
    (ClosedSink("file", RotationResult([Path("web-00004.pcapng"), Path("web-00005.pcapng"),
                                        Path("web-00006.pcapng")], 3, 10)),
     "wrote 3 files web-00004.pcapng ... web-00006.pcapng (pcapng) (3 older removed by --ring)"),
    (ClosedSink("file", RotationResult([Path("a-00001.pcapng"), Path("a-00002.pcapng")],
                                       1_234, 10)),
     "wrote 2 files a-00001.pcapng ... a-00002.pcapng (pcapng) (1,234 older removed by --ring)"),
    (ClosedSink("terminal view", ViewSummary(10, 10, 0, False, 0)), ""),
    (ClosedSink("terminal view", ViewSummary(1500, 300, 1200, False, 0)),
     "terminal view skipped 1,200 of 1,500 packets to keep up (the file has them all)"),
    (ClosedSink("terminal view", ViewSummary(1, 0, 1, True, 1)),
     "terminal view skipped 1 of 1 packet to keep up (the file has them all)"),
    (ClosedSink("Zeek", _zeek([])), "Zeek logs in /logs: no logs"),
    (ClosedSink("Zeek", _zeek(["conn.log", "dns.log"])), "Zeek logs in /logs: conn.log, dns.log"),
    (ClosedSink("Zeek", _zeek([], json_lines=0, json_to="standard output")),
     "Zeek: 0 JSON lines to standard output"),
    (ClosedSink("Zeek", _zeek(["conn.log"], json_lines=1, json_to="out.jsonl")),
     "Zeek: 1 JSON line to out.jsonl; Zeek logs in /logs: conn.log"),
    (ClosedSink("Zeek", _zeek(["conn.log"], counts=_counts(conn=(3, 4), dns=(2, 0)))),
     "Zeek logs in /logs: conn.log (rows kept/dropped: conn 3 kept, 4 dropped; dns 2 kept)"),
    (ClosedSink("Zeek", _zeek([], json_lines=5, json_to="-", counts=SelectionCounts())),
     "Zeek: 5 JSON lines to - (rows kept/dropped: none)"),
], ids=lambda v: type(v.result).__name__ if isinstance(v, ClosedSink) else None)
def test_each_sink_result_is_rendered_by_its_type(closed: ClosedSink, expected: str) -> None:
    assert sink_result_text(closed) == expected


def _rendered(summary: CaptureSummary, opts: CaptureOptions, quiet: bool = False) -> str:
    stream = _SlowStream()
    ConsoleReporter(stream=stream, quiet=quiet).summary(summary, opts)  # type: ignore[arg-type]
    return "".join(stream.chunks)


def test_the_summary_line_joins_the_sink_results_that_say_something(tmp_path: Path) -> None:
    summary, opts = _summary([0], tmp_path)
    summary.sink_results = [
        ClosedSink("file", BytesWritten(1500)),
        ClosedSink("terminal view", ViewSummary(12, 2, 10, False, 0)),
        ClosedSink("Zeek", _zeek(["conn.log"])),
    ]
    summary.closed_sinks = ["Wireshark"]
    summary.notes = ["a note", "another"]
    line, *rest = _rendered(summary, opts).rstrip("\n").split("\n")
    assert line == (
        "zsniff: 12 packets (1.2 kB) from shop/web0 in 2.0 s; stopped: duration reached; "
        f"0 dropped by the kernel; tcpdump stopped in the pod (verified); wrote "
        f"{opts.output.path} (pcapng); terminal view skipped 10 of 12 packets to keep up (the "
        "file has them all); Zeek logs in /logs: conn.log; closed by the reader: Wireshark")
    assert rest == ["zsniff: a note", "zsniff: another"]


@pytest.mark.parametrize(("remote_stopped", "pods", "expected"), [
    (True, 1, "tcpdump stopped in the pod (verified)"),
    (True, 2, "tcpdump stopped in the pods (verified)"),
    (False, 1, "WARNING: tcpdump may still run in the pod"),
    (None, 1, None),
])
def test_the_summary_says_whether_tcpdump_is_gone(
        tmp_path: Path, remote_stopped: bool | None, pods: int, expected: str | None) -> None:
    summary, opts = _summary([None] * pods, tmp_path)
    for pod in summary.pods:
        pod.remote_stopped = remote_stopped
    text = _rendered(summary, opts)
    if expected is None:
        assert "tcpdump" not in text, text
    else:
        assert expected in text, text


def test_a_plain_file_left_out_is_said_and_quiet_says_nothing(tmp_path: Path) -> None:
    summary, opts = _summary([None], tmp_path)
    assert opts.output.path is not None
    opts.output.path.unlink()
    assert f"nothing captured, so no {opts.output.path} was left" in _rendered(summary, opts)
    assert _rendered(summary, opts, quiet=True) == ""
