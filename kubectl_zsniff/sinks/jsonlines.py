"""Where the JSON lines go: a file a shipper tails, or standard output piped into one.

Whole lines only: every write is a batch of complete lines, written to the end before the next
(a pipe write may be partial), so the output never ends inside a line between writes and a
reader that takes lines as they come never sees half of one. A new file is created 0600.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.sinks import PipeWriter, ReaderClosed
from kubectl_zsniff.sinks.file import open_private, refuse_overwrite


class JsonLinesOutput:
    def __init__(self, target: str, *, flag: str = "--json", force: bool = False,
                 stdout: BinaryIO | None = None) -> None:
        """`target` is a file, or "-" for `stdout` (the caller's stream, found by cli/)."""
        self.target = target
        self.flag = flag
        self.lines = 0
        self._lock = threading.Lock()  # the live stream writes from several log tailers
        self._file: BinaryIO | None = None
        self._pipe: PipeWriter | None = None
        if target == "-":
            if stdout is None:
                raise ValueError(f"{flag} - needs the standard output stream")
            stdout.flush()  # from here on, whole lines go straight to the descriptor
            self._fd = stdout.fileno()
            self.where = "standard output"
            # A shipper that stops reading holds the capture only until it is stopping.
            self._pipe = PipeWriter(self._fd, f"the reader of the {flag} stream")
        else:
            path = Path(target)
            refuse_overwrite(path, force, instead=f"give {flag} another file")
            self._file = open_private(path, buffering=0, flag=flag)
            self._fd = self._file.fileno()
            self.where = str(path)

    def write(self, data: bytes) -> None:
        if not data:
            return
        view = memoryview(data)
        with self._lock:
            try:
                if self._pipe is not None:
                    self._pipe.write(view)
                while self._pipe is None and view:
                    view = view[os.write(self._fd, view):]
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ReaderClosed(f"the reader of the {self.flag} stream went away") from exc
            except OSError as exc:
                raise ZsniffError(
                    f"cannot write the {self.flag} stream to {self.where}: "
                    f"{exc.strerror or exc}",
                    "check free space and permissions, or give another file",
                    ExitStatus.OUTPUT_ERROR,
                ) from exc
            self.lines += data.count(b"\n")

    def stopping(self) -> None:
        if self._pipe is not None:
            self._pipe.stopping()

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.restore()
            self._pipe = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


__all__ = ["JsonLinesOutput"]
