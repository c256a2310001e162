"""What the user reads on stderr: whole lines, whatever the threads writing them."""

from __future__ import annotations

import threading
import time

from kubectl_zsniff.cli.console import ConsoleReporter
from kubectl_zsniff.errors import ExitStatus, ZsniffError


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
