"""The terminal view's child process: `python -m kubectl_zsniff.cli.view_child`.

ViewSink (sinks/view.py) starts it with the sink's pipe as stdin and the user's terminal as
stdout, so that pyshark and tshark never sit on the capture path. It strips the sink's skip
markers (packets the sink dropped because this process fell behind) before tshark sees the
stream, and renders each packet as one line with view/render.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import threading

from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.view.render import (
    TSHARK_TIME,
    LineWriter,
    check_display_filter,
    close_quietly,
    pipe_capture,
    render_packets,
    require_tshark,
    skip_pieces,
)


class _SkipLedger:
    """Drop counts announced by the sink, keyed by how many packets had been forwarded then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: collections.deque[tuple[int, int]] = collections.deque()
        self._reported = 0

    def add(self, forwarded: int, dropped_total: int) -> None:
        with self._lock:
            self._events.append((forwarded, dropped_total))

    def skipped_before(self, frame_number: int) -> int:
        """Packets dropped before frame_number (tshark numbers forwarded packets from 1)."""
        latest = self._reported
        with self._lock:
            while self._events and self._events[0][0] < frame_number:
                latest = max(latest, self._events.popleft()[1])
        skipped, self._reported = latest - self._reported, latest
        return skipped

    def remaining(self) -> int:
        with self._lock:
            latest = max([total for _, total in self._events], default=self._reported)
        return max(0, latest - self._reported)


def _forward(src_fd: int, dst_fd: int, ledger: _SkipLedger) -> None:
    """Copy the pcapng stream to tshark, stripping the sink's skip markers into the ledger."""
    from kubectl_zsniff.formats.pcapng import PACKET_BLOCK_TYPES
    from kubectl_zsniff.sinks.view import BlockSplitter, parse_skip_marker

    splitter = BlockSplitter()
    forwarded = 0
    try:
        while True:
            chunk = os.read(src_fd, 1 << 16)
            if not chunk:
                break
            out = bytearray()
            for block in splitter.feed(chunk):
                dropped_total = parse_skip_marker(block, splitter.little_endian)
                if dropped_total is not None:
                    ledger.add(forwarded, dropped_total)
                    continue
                if block.block_type in PACKET_BLOCK_TYPES:
                    forwarded += 1
                out += block.data
            view = memoryview(out)
            while view:
                view = view[os.write(dst_fd, view) :]
    except OSError:
        pass  # tshark went away: the renderer sees its end
    finally:
        os.close(dst_fd)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kubectl_zsniff.cli.view_child",
        description="Render a pcapng stream from stdin, one line per packet (pod names from NRBs).",
    )
    parser.add_argument("--time", choices=list(TSHARK_TIME), default="relative")
    parser.add_argument("--filter", dest="display_filter", default=None, help="display filter")
    parser.add_argument("--hosts-file", default=None)
    parser.add_argument("--width", type=int, default=None, help="terminal width (default: auto)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The view child: stdin is the sink's pipe, stdout the user's terminal."""
    from rich.console import Console

    # Ctrl-C is the capture's to handle: it closes our stdin and we finish the rows we have.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = _parse_args(argv)
    force = {"always": True, "never": False}.get(args.color)
    width = args.width
    if width is None and not sys.stdout.isatty():
        # A pipe or a file has no width: keep whole summaries (rich would crop at 80 columns).
        width = 200
    console = Console(
        width=width, force_terminal=force, no_color=args.color == "never", highlight=False
    )
    try:
        require_tshark()
        if args.display_filter:
            check_display_filter(args.display_filter)
    except ZsniffError as exc:
        Console(stderr=True).print(f"view: {exc.message} ({exc.hint})", highlight=False)
        return int(exc.status)
    ledger = _SkipLedger()
    read_fd, write_fd = os.pipe()
    forwarder = threading.Thread(
        target=_forward, args=(sys.stdin.fileno(), write_fd, ledger), daemon=True
    )
    forwarder.start()
    capture = pipe_capture(read_fd, args.display_filter, args.time, args.hosts_file)
    try:
        render_packets(capture, console, skipped_before=ledger.skipped_before)
        tail = ledger.remaining()
        if tail:
            LineWriter(console).write(skip_pieces(tail))
    except BrokenPipeError:
        return 0  # our reader (a pager, head) went away
    finally:
        close_quietly(capture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
