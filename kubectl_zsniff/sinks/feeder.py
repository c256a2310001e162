"""A child's stdin fed from a thread of its own: at the end, the capture never waits on it.

For tools zsniff starts and owns (Zeek), unlike a reader the user controls (a pager, Wireshark):
such a tool may take seconds before it reads at all (Zeek loading its scripts), and giving it up
in the middle of a pcap record costs every log it would have written. So:

- while capturing, at most ``limit`` bytes wait in memory and a write beyond that waits for the
  tool (back-pressure, as for any reader: nothing is lost);
- once the capture is stopping, writes never wait: the last packets are queued whatever the
  size, so the remote tcpdump is stopped on time, and the tool gets every whole record later;
- the stream ends only at ``finish()``, after the last queued byte: never inside a record.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

#: Bytes held for a tool that is not reading yet, before the capture waits for it.
QUEUE_LIMIT = 16 << 20


class FeederClosed(Exception):
    """The tool's end of the pipe is gone (it exited)."""


class PipeFeeder:
    def __init__(self, fd: int, limit: int = QUEUE_LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._finishing = False
        self._broken: OSError | None = None
        self.delivered = 0
        os.set_blocking(fd, True)
        self._thread = threading.Thread(target=self._run, name="zeek-feeder", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        """Queue whole records; raises FeederClosed once the tool is gone."""
        chunk = bytes(data)  # the caller's memoryview is reused after this returns
        with self._cond:
            while (self._queued >= self.limit and not self._stopping
                   and self._broken is None):
                self._cond.wait(0.25)
            if self._broken is not None:
                raise FeederClosed(str(self._broken))
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._cond.notify_all()

    def stopping(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def finish(self, timeout: float) -> bool:
        """Deliver everything queued, then close the pipe. False when the tool took longer
        than `timeout` (the pipe is then left open for the caller to stop the tool)."""
        with self._cond:
            self._finishing = True
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._close()
        return True

    def abandon(self) -> None:
        """The tool is being stopped: drop what is queued, close our end."""
        with self._cond:
            self._chunks.clear()
            self._queued = 0
            self._finishing = True
            self._cond.notify_all()
        self._close()

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def _close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._finishing:
                    self._cond.wait()
                if not self._chunks:
                    return  # finishing, and everything delivered
                chunk = self._chunks.popleft()
            view = memoryview(chunk)
            try:
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
            except OSError as exc:  # EPIPE: the tool exited; EBADF: abandoned
                with self._cond:
                    self._broken = exc
                    self._chunks.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._queued -= len(chunk)
                self.delivered += len(chunk)
                self._cond.notify_all()


__all__ = ["PipeFeeder", "FeederClosed", "QUEUE_LIMIT"]
