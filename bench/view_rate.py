"""Rows per second the terminal view renders (tshark PSML via pyshark + the ANSI writer).

Peer measured in the same run: pyshark's own JSON mode iterating the same file (no rendering).
Usage: python bench/view_rate.py [PACKETS]   (never part of the test run)
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubectl_zsniff.view.render import view_file  # noqa: E402
from tests.unit.test_view import demo_stream  # noqa: E402


def main() -> None:
    packets = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pcapng"
        path.write_bytes(b"".join(demo_stream(packets)))
        console = Console(file=io.StringIO(), width=160, force_terminal=True)
        started = time.perf_counter()
        shown = view_file(str(path), console)
        view_rate = shown / (time.perf_counter() - started)

        import pyshark

        capture = pyshark.FileCapture(
            str(path), use_json=True, keep_packets=False, custom_parameters=["-N", "n"]
        )
        started = time.perf_counter()
        count = sum(1 for _ in capture)
        json_rate = count / (time.perf_counter() - started)
        capture.close()
    print(f"view (PSML + ANSI writer): {view_rate:,.0f} rows/s")
    print(f"pyshark use_json iteration: {json_rate:,.0f} packets/s")
    print(f"ratio: {view_rate / json_rate:.2f}x")


if __name__ == "__main__":
    main()
