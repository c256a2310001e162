"""ViewSink: feeds the terminal view child without ever blocking or slowing the capture.

The capture hands `write()` whole pcapng blocks. They go to the child's stdin, a non-blocking
pipe (enlarged to absorb bursts). When the pipe is full:
- section header, interface description, name resolution and any other non-packet blocks are
  queued and sent later, in order: the view needs them to decode and to name pods;
- packet blocks (EPB, SPB, obsolete PB) are dropped whole and counted;
- a block already partly written is finished first, so the child never sees a torn block.
After a drop, the next block sent is a private marker block (a local-use block type, pcapng
section 11.1 reserves types with the top bit set) carrying the total dropped so far; the child
strips it before tshark and prints "view skipped N packets" where the gap is.
A dead child (user closed it, crash) never raises into the capture: the sink notes it and
counts the rest as dropped.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from kubectl_zsniff.formats.detect import ByteOrder
from kubectl_zsniff.formats.pcapng import PACKET_BLOCK_TYPES, BlockFramer, frame_block
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks import Sink
from kubectl_zsniff.sinks.results import ViewSummary

SKIP_MARKER_TYPE = 0x80005A53  # local-use block type ("ZS"): never leaves the sink -> child pipe
_PIPE_SIZE = 1 << 20  # Linux F_SETPIPE_SZ; default pipe-max-size is 1 MiB
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class Block:
    block_type: int
    data: bytes  # the whole block, header and trailer included


class BlockSplitter:
    """Splits a pcapng byte stream into whole blocks (formats.pcapng's framer, bytes out)."""

    def __init__(self) -> None:
        # Little-endian until an SHB says otherwise: our writer writes little-endian.
        self._framer = BlockFramer("<")

    @property
    def little_endian(self) -> bool:
        return self._framer.order == "<"

    def feed(self, data: bytes) -> list[Block]:
        blocks: list[Block] = []
        self._framer.feed(
            data, lambda block_type, block: blocks.append(Block(block_type, bytes(block)))
        )
        return blocks


def skip_marker(dropped_total: int, little_endian: bool = True) -> bytes:
    """The private block telling the view how many packets were dropped so far in total."""
    order: ByteOrder = "<" if little_endian else ">"
    return frame_block(SKIP_MARKER_TYPE, struct.pack(order + "Q", dropped_total), order)


def parse_skip_marker(block: Block, little_endian: bool = True) -> int | None:
    """dropped_total from a skip marker block, None for any other block."""
    if block.block_type != SKIP_MARKER_TYPE or len(block.data) != 20:
        return None
    order = "<" if little_endian else ">"
    (dropped_total,) = struct.unpack_from(order + "Q", block.data, 8)
    return int(dropped_total)


def view_command(
    time_format: str = "relative",
    display_filter: str | None = None,
    hosts_file: str | None = None,
    width: int | None = None,
    color: str = "auto",
) -> list[str]:
    """The default child: this interpreter running the view child (cli/view_child.py)."""
    command = [sys.executable, "-m", "kubectl_zsniff.cli.view_child",
               "--time", time_format, "--color", color]
    if display_filter:
        command += ["--filter", display_filter]
    if hosts_file:
        command += ["--hosts-file", hosts_file]
    if width:
        command += ["--width", str(width)]
    return command


def _own_process_group() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"start_new_session": True}


class ViewSink(Sink):
    """Sink to the terminal view child. write() never blocks; close() returns the counts."""

    fmt = OutputFormat.PCAPNG  # needs our pcapng (NRBs carry the pod names), not tcpdump's pcap
    label = "terminal view"

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        stdout: IO[bytes] | IO[str] | int | None = None,
        stderr: IO[bytes] | IO[str] | int | None = None,
        env: dict[str, str] | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        self._process = subprocess.Popen(
            list(command) if command is not None else view_command(),
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            env=env,
            # Own process group: the terminal's Ctrl-C stops the capture, which then closes our
            # pipe; the view finishes the rows it has instead of dying mid-line. (process_group is
            # 3.11+; on 3.10 a new session does the same for signals, output still reaches the tty.)
            **_own_process_group(),
        )
        assert self._process.stdin is not None
        self._stdin = self._process.stdin
        self._fd = self._stdin.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError):  # not Linux, or over the limit: the default works too
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self._splitter = BlockSplitter()
        self._pending = memoryview(b"")  # rest of a block partly written: finished first
        self._queue: collections.deque[bytes] = collections.deque()  # unsent non-packet blocks
        self._close_timeout = close_timeout
        self._unreported_drops = 0
        self.total_packets = 0
        self.sent_packets = 0
        self.dropped_packets = 0
        self.view_gone = False
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    def write(self, data: bytes | memoryview) -> None:
        """Send whole pcapng blocks to the view if its pipe has room, else drop packets."""
        # The splitter keeps a torn block's tail between calls: it needs bytes, not a view.
        blocks = self._splitter.feed(data if isinstance(data, bytes) else bytes(data))
        if self.view_gone or self._closed:
            self._count_lost(blocks)
            return
        try:
            self._write_blocks(blocks)
        except OSError:  # EPIPE: the view exited; anything else: the pipe is unusable
            self._mark_gone()

    def _count_lost(self, blocks: list[Block]) -> None:
        for block in blocks:
            if block.block_type in PACKET_BLOCK_TYPES:
                self.total_packets += 1
                self.dropped_packets += 1

    def _mark_gone(self) -> None:
        self.view_gone = True
        self._queue.clear()
        self._pending = memoryview(b"")

    def _flush_backlog(self) -> bool:
        """Write the torn block's rest, then queued blocks; True when nothing is left."""
        while self._pending:
            written = self._try_write(self._pending)
            if not written:
                return False
            self._pending = self._pending[written:]
        while self._queue:
            head = self._queue[0]
            written = self._try_write(head)
            if not written:
                return False
            self._queue.popleft()
            if written < len(head):
                self._pending = memoryview(head)[written:]
                return False
        return True

    def _try_write(self, data: bytes | memoryview) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def _write_blocks(self, blocks: list[Block]) -> None:
        if not blocks:
            self._flush_backlog()
            return
        free = self._flush_backlog()
        if (
            free
            and self._unreported_drops
            and any(b.block_type in PACKET_BLOCK_TYPES for b in blocks)
        ):
            # Tell the view about the gap before the next packet it will show.
            marker = skip_marker(self.dropped_packets, self._splitter.little_endian)
            blocks = [Block(SKIP_MARKER_TYPE, marker), *blocks]
            self._unreported_drops = 0
        if free:
            # One syscall for the whole batch; the byte count tells which blocks got through.
            payload = (
                b"".join(block.data for block in blocks) if len(blocks) > 1 else blocks[0].data
            )
            written = self._try_write(payload)
        else:
            written = 0
        offset = 0
        blocked = False
        for block in blocks:
            end = offset + len(block.data)
            is_packet = block.block_type in PACKET_BLOCK_TYPES
            if block.block_type != SKIP_MARKER_TYPE and is_packet:
                self.total_packets += 1
            if not blocked and end <= written:
                if is_packet:
                    self.sent_packets += 1
            elif not blocked and offset < written:
                self._pending = memoryview(block.data)[written - offset :]
                if is_packet:
                    self.sent_packets += 1
                blocked = True
            else:
                blocked = True
                if is_packet:
                    self.dropped_packets += 1
                    self._unreported_drops += 1
                elif block.block_type != SKIP_MARKER_TYPE:
                    self._queue.append(block.data)
            offset = end

    def close(self) -> ViewSummary:
        """Flush what the view still needs (bounded), close its input, wait for it (bounded)."""
        if not self._closed:
            self._closed = True
            deadline = time.monotonic() + self._close_timeout
            if not self.view_gone:
                if self._unreported_drops:  # the view reports the drops at its very end
                    marker = skip_marker(self.dropped_packets, self._splitter.little_endian)
                    self._queue.append(marker)
                    self._unreported_drops = 0
                try:
                    while not self._flush_backlog() and time.monotonic() < deadline:
                        select.select([], [self._fd], [], max(0.0, deadline - time.monotonic()))
                except OSError:
                    self._mark_gone()
            with contextlib.suppress(OSError):
                self._stdin.close()
            try:
                self._process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=1.0)
        return ViewSummary(
            total_packets=self.total_packets,
            sent_packets=self.sent_packets,
            dropped_packets=self.dropped_packets,
            view_gone=self.view_gone,
            exit_code=self._process.returncode,
        )

    def __enter__(self) -> ViewSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
