"""Capture files, created readable by their owner only."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
from pathlib import Path
from typing import BinaryIO

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks import PipeWriter, ReaderClosed, Sink
from kubectl_zsniff.sinks.results import BytesWritten

OWNER_ONLY = 0o600


def open_output(path: Path, buffering: int = 1 << 20,
                flag: str = "-w") -> tuple[BinaryIO, bool]:
    """Open `path` for writing; (file, created).

    A path that does not exist is created with mode 0600 (O_EXCL: it is ours, so it may later be
    removed). Anything already there (a file, a device such as /dev/null, a FIFO) is opened as
    it is: truncated if it is a regular file, but its mode and its existence are never changed.
    ``buffering=0`` gives the raw file: each write is one system call, no copy on the way.
    """
    binary = getattr(os, "O_BINARY", 0)
    created = True
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | binary, OWNER_ONLY)
        except FileExistsError:
            created = False
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | binary)
    except OSError as exc:
        raise ZsniffError(
            f"cannot write {path}: {exc.strerror}",
            f"choose another path with {flag}, or check the folder's permissions",
            ExitStatus.OUTPUT_ERROR,
        ) from exc
    if created:
        with contextlib.suppress(OSError, AttributeError):  # fchmod is missing on Windows
            os.fchmod(fd, OWNER_ONLY)  # whatever the umask
    return os.fdopen(fd, "wb", buffering=buffering), created


def refuse_overwrite(path: Path, force: bool, instead: str = "give -w another file") -> None:
    """An existing regular file with data in it is not overwritten without --force (kubectl's
    way: refuse rather than surprise). Devices, FIFOs and empty files are written to."""
    if force:
        return
    try:
        info = os.stat(path)
    except OSError:
        return  # missing (created later), or unreadable: open_output says why
    if stat.S_ISREG(info.st_mode) and info.st_size > 0:
        raise ZsniffError(
            f"{path} already exists ({info.st_size:,} bytes); it is not overwritten",
            f"add --force to overwrite it, or {instead}",
            ExitStatus.OUTPUT_ERROR,
        )


def open_private(path: Path, buffering: int = 1 << 20, flag: str = "-w") -> BinaryIO:
    """`open_output` without the flag: a new file is 0600, an existing one keeps its mode."""
    return open_output(path, buffering, flag)[0]


class FileSink(Sink):
    label = "file"

    def __init__(self, path: Path, fmt: OutputFormat) -> None:
        self.path = path
        self.fmt = OutputFormat(fmt)
        # Unbuffered: one write system call per exec frame (as kubectl does), straight from the
        # received bytes. The file grows while capturing, so `tshark -r` or `tail -f` see
        # packets now, not when 1 MB or the capture ends; a buffered file flushed per frame
        # cost an extra copy of every byte into its buffer.
        self._file: BinaryIO | None
        self._file, self.created = open_output(path, buffering=0)
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        out = self._file
        if out is None:
            return
        size = len(data)
        try:
            written = out.write(data)
            if written is not None and written < size:
                # A raw write may be partial (a signal, a nearly full disk): write the rest.
                view = memoryview(data)[written:]
                while view:
                    n = out.write(view)
                    view = view[n or 0 :]
        except OSError as exc:
            # Each write is whole packets: cut back what a full disk left half-written, so
            # the file ends on its last whole packet (a device or FIFO cannot be cut).
            cut = False
            with contextlib.suppress(OSError, ValueError):
                os.ftruncate(out.fileno(), self.bytes_written)
                cut = True
            raise _write_error(self.path, exc, cut) from exc
        self.bytes_written += size

    def close(self) -> BytesWritten:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                raise _write_error(self.path, exc) from exc
            self._file = None
        return BytesWritten(self.bytes_written)

    def discard_if_empty(self) -> None:
        """Remove the file if zsniff created it and nothing is in it. A device, a FIFO or a
        file that was there before keeps its existence."""
        with contextlib.suppress(Exception):
            self.close()
        if self.created:
            with contextlib.suppress(OSError):
                if self.path.is_file() and self.path.stat().st_size == 0:
                    self.path.unlink()


def _write_error(path: Path, exc: OSError, cut: bool = False) -> ZsniffError:
    hint = "free some space, or write elsewhere with -w" if exc.errno == errno.ENOSPC else ""
    kept = "; it keeps the packets before, up to the last whole one" if cut else ""
    return ZsniffError(f"writing {path} failed: {exc.strerror}{kept}", hint,
                       ExitStatus.OUTPUT_ERROR)


class StdoutSink(Sink):
    """Binary capture on standard output, for pipes. Refuses a terminal."""

    label = "stdout"

    def __init__(self, fmt: OutputFormat, out: BinaryIO) -> None:
        self.fmt = OutputFormat(fmt)
        if out.isatty():
            raise ZsniffError(
                "refusing to write binary capture data to a terminal",
                "redirect it (-w - > file.pcapng), pipe it (| tshark -r -), or use --view",
                ExitStatus.OUTPUT_ERROR,
            )
        out.flush()  # from here on, whole blocks go straight to the descriptor
        self._out: BinaryIO | None = out
        self._fd = out.fileno()
        self._pipe = PipeWriter(self._fd, "the program reading standard output")
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._out is None:
            return
        try:
            self._pipe.write(data)
        except ReaderClosed:
            self._out = None
            self._pipe.restore()
            raise
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._out = None
            _silence(self._fd)
            raise ReaderClosed("the program reading standard output went away") from exc
        except OSError as exc:
            raise ZsniffError(
                f"writing to standard output failed: {exc.strerror}", "", ExitStatus.OUTPUT_ERROR
            ) from exc
        self.bytes_written += len(data)

    def stopping(self) -> None:
        self._pipe.stopping()

    def reader_gone(self) -> bool:
        """The pipe's reader closed its end (poll reports an error on our end)."""
        if self._out is None:
            return True
        try:
            poller = select.poll()
            poller.register(self._out.fileno(), select.POLLOUT)
            events = poller.poll(0)
        except (OSError, ValueError, AttributeError):  # not a pollable file, or Windows
            return False
        return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)

    def close(self) -> BytesWritten:
        if self._out is not None:
            self._pipe.restore()
            self._out = None
        return BytesWritten(self.bytes_written)


def _silence(fd: int) -> None:
    # Python flushes sys.stdout at exit and would complain about the broken pipe again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError):
        pass
