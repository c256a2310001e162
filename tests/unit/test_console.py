"""What the user reads on stderr: whole lines, whatever the threads writing them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kubectl_zsniff.capture.run import CaptureSummary, PodCapture, StopReason, TcpdumpReport
from kubectl_zsniff.cli.console import ConsoleReporter
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.options import (
    CaptureOptions,
    KubeOptions,
    OutputOptions,
    TargetOptions,
    TcpdumpOptions,
)


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
