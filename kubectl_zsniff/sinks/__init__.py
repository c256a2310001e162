"""Where captured bytes go. Every sink takes whole pcap records or pcapng blocks, never a torn one.

A sink raises ``ReaderClosed`` when its reader went away (Wireshark closed, `head` exited): the
capture then stops cleanly. Other failures are ``ZsniffError``s.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks.results import SinkResult

#: Once the capture is stopping, a reader that takes nothing for this long is given up.
STALLED_READER_SECONDS = 5.0


class ReaderClosed(ZsniffError):
    status = ExitStatus.READER_CLOSED


class ReaderStalled(ReaderClosed):
    """The reader is there but took nothing for too long while the capture was stopping."""


class Sink(ABC):
    """Where the pipeline's bytes go: the one contract every output keeps.

    The defaults are those of a sink with nothing to say at that moment; a sink overrides what
    applies to it (a pipe's reader that may go away, a file that may be left empty).
    """

    #: PCAP: tcpdump's classic stream passed through untouched; PCAPNG: ours, with names.
    fmt: OutputFormat
    #: How the summary names it ("file", "Wireshark", ...).
    label: str

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Whole records or blocks. ``data`` may be a memoryview into the received frame: use
        or copy it before returning. Raises ``ReaderClosed`` when the reader went away."""

    @abstractmethod
    def close(self) -> SinkResult:
        """The end of the capture: flush, release, and say what came of it."""

    def bind_preamble(self, preamble: Callable[[], bytes]) -> None:  # noqa: B027 (a default)
        """The pipeline's blocks that start a file, for a sink that starts files itself."""

    def stopping(self) -> None:  # noqa: B027 (a default)
        """The capture is stopping: a reader that takes nothing more may now be given up."""

    def reader_gone(self) -> bool:
        """Whether the reader went away on its own (polled while capturing)."""
        return False

    def reader_failure(self) -> ZsniffError | None:
        """Why a reader that went away did, when it failed rather than being closed."""
        return None

    def discard_if_empty(self) -> None:  # noqa: B027 (a default)
        """Nothing was captured: remove what this sink created for it (an empty file)."""


class PipeWriter:
    """Whole writes to a pipe whose reader may stop reading (a paused pager, a hung tool).

    Non-blocking underneath: while capturing, a full pipe just waits (back-pressure, nothing
    lost); once ``stopping()`` was called, a reader that takes nothing for
    ``STALLED_READER_SECONDS`` raises ``ReaderClosed`` instead of holding the capture, and the
    remote tcpdump, forever. ``BrokenPipeError`` passes through for the caller to name.
    """

    def __init__(self, fd: int, reader: str) -> None:
        self.fd = fd
        self.reader = reader
        self._stopping = threading.Event()
        self._was_blocking: bool | None = None
        with contextlib.suppress(OSError, AttributeError):  # a platform without it: blocking
            self._was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)

    def stopping(self) -> None:
        self._stopping.set()

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        stalled_since: float | None = None
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                written = 0
            if written:
                view = view[written:]
                stalled_since = None
                continue
            if self._stopping.is_set():
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since >= STALLED_READER_SECONDS:
                    raise ReaderStalled(
                        f"{self.reader} stopped reading: the end of the capture was not "
                        "delivered to it")
            select.select([], [self.fd], [], 0.25)

    def restore(self) -> None:
        """Give the descriptor back in the mode it came in (stdout is shared)."""
        if self._was_blocking is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(self.fd, self._was_blocking)
