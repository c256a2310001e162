"""A capture written as a series of files, like tcpdump's -C/-G/-W, each a complete pcapng.

Naming: `-w web.pcapng` writes `web-00001.pcapng`, `web-00002.pcapng`, ... (a sequence of at
least five digits that only grows, so `ls` lists the files in capture order and a name is never
reused). With a ring (`-W N`) the oldest file is removed before a new one would make N+1, so
there are never more than N. A file is closed for good when the next one opens: it is never
opened again.

Every file starts with the pipeline's own preamble (section header, one interface per pod
started so far, a name table with every name current at that moment), so each can be read
alone; then it gets the blocks as they come. Files are split only before a packet block, so a
name update always lands in the file of the packets that need it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.pcapng import BLOCK_EPB
from kubectl_zsniff.options import OutputFormat, RotationOptions
from kubectl_zsniff.sinks import Sink
from kubectl_zsniff.sinks.file import open_output
from kubectl_zsniff.sinks.results import RotationResult

SEQUENCE_DIGITS = 5
_BLOCK_HEADER = struct.Struct("<II")  # zsniff writes its pcapng little-endian


def rotated_path(base: Path, number: int) -> Path:
    """The name of file `number` (from 1) of a capture written to `base`."""
    return base.with_name(f"{base.stem}-{number:0{SEQUENCE_DIGITS}d}{base.suffix}")


def existing_rotated_files(base: Path) -> list[Path]:
    """Files of an earlier rotated capture to the same `base` (what a new one would overwrite)."""
    pattern = re.compile(re.escape(base.stem) + "-\\d{" + str(SEQUENCE_DIGITS) + ",}"
                         + re.escape(base.suffix) + "$")
    folder = base.parent
    try:
        return sorted(p for p in folder.iterdir() if pattern.match(p.name))
    except OSError:
        return []


def refuse_rotated_overwrite(base: Path, force: bool) -> None:
    if force:
        return
    found = existing_rotated_files(base)
    if found:
        raise ZsniffError(
            f"{found[0]} already exists ({len(found)} file{'s' if len(found) > 1 else ''} of an "
            "earlier rotated capture); they are not overwritten",
            "add --force to overwrite them, or give -w another name",
            ExitStatus.OUTPUT_ERROR,
        )


class RotatingFileSink(Sink):
    label = "file"
    fmt = OutputFormat.PCAPNG

    def __init__(self, base: Path, rotation: RotationOptions,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.rotation = rotation
        self._clock = clock
        self._preamble: Callable[[], bytes] | None = None
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._number = 0
        self._size = 0  # bytes in the current file
        self._packets = 0  # packets in the current file
        self._opened_at = 0.0
        self.removed = 0
        self.bytes_written = 0

    def bind_preamble(self, preamble: Callable[[], bytes]) -> None:
        """The pipeline's blocks that start a file: SHB, IDBs, every current name."""
        self._preamble = preamble

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._file is None:
            if self._number == 0:
                # The first write is the pipeline's own section start: it goes in as it is.
                self._open_next(preamble=False)
            else:
                return  # closed
        limit = self.rotation.size
        due = self._time_is_up()
        if not due and (limit is None or self._size + len(view) <= limit):
            self._put(view)
            self._count_packets(view)
            return
        # Walk the blocks: a new file starts before the packet that would not fit.
        start = offset = 0
        end = len(view)
        while offset < end:
            block_type, length = _BLOCK_HEADER.unpack_from(view, offset)
            if block_type == BLOCK_EPB and self._packets and (
                due or (limit is not None and self._size + (offset - start) + length > limit)
            ):
                self._put(view[start:offset])
                self._rotate()
                due = False
                start = offset
            if block_type == BLOCK_EPB:
                self._packets += 1
            offset += length
        self._put(view[start:end])

    def _count_packets(self, view: memoryview) -> None:
        offset, end = 0, len(view)
        while offset < end:
            block_type, length = _BLOCK_HEADER.unpack_from(view, offset)
            if block_type == BLOCK_EPB:
                self._packets += 1
            offset += length

    def _time_is_up(self) -> bool:
        every = self.rotation.every
        return every is not None and self._packets > 0 and \
            self._clock() - self._opened_at >= every

    def _put(self, view: memoryview) -> None:
        if not view:
            return
        out = self._file
        assert out is not None and self._path is not None
        before = self._size
        try:
            written = out.write(view)
            rest = view[written or 0:]
            while rest:
                n = out.write(rest)
                rest = rest[n or 0:]
        except OSError as exc:
            # The file keeps only whole blocks: cut back what a full disk left half-written.
            with contextlib.suppress(OSError):
                os.ftruncate(out.fileno(), before)
            removed = False
            if before == 0:
                # Its header did not fit: an empty file is no pcapng, and holds no packet.
                with contextlib.suppress(OSError):
                    self._path.unlink()
                    removed = True
            raise _write_error(self._path, exc, self._finished(), removed) from exc
        self._size += len(view)
        self.bytes_written += len(view)

    def _rotate(self) -> None:
        self._close_current()
        self._open_next(preamble=True)

    def _open_next(self, *, preamble: bool) -> None:
        ring = self.rotation.ring
        if ring is not None:
            # Files removed + 1 up to the current number are on disk: numbers only grow, so
            # nothing per file is kept in memory however long the capture runs.
            while self._number - self.removed >= ring:
                with contextlib.suppress(FileNotFoundError):
                    rotated_path(self.base, self.removed + 1).unlink()
                self.removed += 1
        self._number += 1
        path = rotated_path(self.base, self._number)
        self._file, _ = open_output(path, buffering=0)
        self._path = path
        self._size = 0
        self._packets = 0
        self._opened_at = self._clock()
        if preamble:
            assert self._preamble is not None, "bind_preamble() first"
            self._put(memoryview(self._preamble()))

    def _close_current(self) -> None:
        if self._file is None:
            return
        out, self._file = self._file, None
        try:
            out.close()
        except OSError as exc:
            assert self._path is not None
            raise _write_error(self._path, exc, self._finished()) from exc

    def _finished(self) -> int:
        """How many files before the current one are on disk, complete."""
        return max(0, self._number - self.removed - 1)

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> RotationResult:
        self._close_current()
        kept = [rotated_path(self.base, n) for n in range(self.removed + 1, self._number + 1)]
        kept = [path for path in kept if path.exists()]  # not one a full disk left empty
        return RotationResult(kept, self.removed, self.bytes_written)

    def discard_if_empty(self) -> None:
        """Nothing captured: remove the one empty file this capture may have created (a
        capture that wrote anything has no empty file: each starts with its header)."""
        with contextlib.suppress(Exception):
            self._close_current()
        if self._number == 1 and self._path is not None:
            with contextlib.suppress(OSError):
                if self._path.is_file() and self._path.stat().st_size == 0:
                    self._path.unlink()


def _write_error(path: Path, exc: OSError, finished: int,
                 removed: bool | None = None) -> ZsniffError:
    """`removed`: whether the file being written was removed (True: it held nothing) or cut
    back to its last whole block (False); None when it was not written to."""
    intact = f"; the {finished} finished files before it are intact" if finished else ""
    if removed:
        intact += " (it held no packet and was removed)"
    elif removed is False:
        intact += "; it keeps the packets before, up to the last whole one"
    hint = ("free some space, or write elsewhere with -w; a smaller --ring keeps less on disk"
            if exc.errno == errno.ENOSPC else "")
    return ZsniffError(f"writing {path} failed: {exc.strerror}{intact}", hint,
                       ExitStatus.OUTPUT_ERROR)
