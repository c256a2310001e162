"""A live Wireshark fed through its standard input, with network name resolution on."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ExitStatus, ZsniffError
from . import PipeWriter, ReaderClosed

# Where installers put Wireshark when it is not on PATH (a frequent complaint about peers).
WELL_KNOWN_PATHS = {
    "darwin": ["/Applications/Wireshark.app/Contents/MacOS/Wireshark"],
    "win32": [
        os.path.join(
            os.environ.get("PROGRAMFILES", r"C:\Program Files"), "Wireshark", "Wireshark.exe"
        ),
        os.path.join(
            os.environ.get("PROGRAMFILES(X86)", r"C:\Program Files (x86)"),
            "Wireshark",
            "Wireshark.exe",
        ),
    ],
    "linux": ["/usr/bin/wireshark", "/usr/local/bin/wireshark", "/snap/bin/wireshark"],
}


def find_wireshark(explicit: str | None = None) -> str:
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise ZsniffError(
            f"Wireshark not found at {explicit}",
            "give the path of the Wireshark executable with --wireshark-path",
            ExitStatus.TOOL_MISSING,
        )
    for name in ("wireshark", "Wireshark"):
        found = shutil.which(name)
        if found:
            return found
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    for candidate in WELL_KNOWN_PATHS.get(platform, []):
        if Path(candidate).is_file():
            return candidate
    raise ZsniffError(
        "Wireshark is not installed (not on PATH nor in its usual install folder)",
        "install it (https://www.wireshark.org/download.html, `apt install wireshark`, "
        "`brew install --cask wireshark`), give --wireshark-path, or write a file with -w",
        ExitStatus.TOOL_MISSING,
    )


def wireshark_argv(executable: str, title: str) -> list[str]:
    return [
        executable,
        "-k",
        "-i",
        "-",
        # Names from our Name Resolution Blocks show only with network name resolution on,
        # which Wireshark's default profile leaves off; never ask DNS about pod addresses.
        "-o",
        "nameres.network_name:TRUE",
        "-o",
        "nameres.use_external_name_resolver:FALSE",
        "-o",
        f"gui.window_title:{title}",
    ]


class WiresharkSink:
    fmt = "pcapng"
    label = "Wireshark"

    def __init__(self, title: str, executable: str | None = None) -> None:
        self.argv = wireshark_argv(find_wireshark(executable), title)
        try:
            # Its own session: Ctrl-C in our terminal stops the capture, not the window
            # the user is reading it in.
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ZsniffError(
                f"cannot start Wireshark: {exc.strerror}", "", ExitStatus.TOOL_MISSING
            ) from exc
        assert self._proc is not None and self._proc.stdin is not None
        self._pipe: PipeWriter | None = PipeWriter(self._proc.stdin.fileno(), "Wireshark")
        self.bytes_written = 0

    def write(self, data: bytes | memoryview) -> None:
        proc = self._proc
        if proc is None or self._pipe is None:
            return
        try:
            self._pipe.write(data)
        except ReaderClosed:
            self._proc = None
            raise
        except (OSError, ValueError) as exc:  # a broken pipe, or a closed one
            self._proc = None
            raise ReaderClosed("Wireshark was closed") from exc
        self.bytes_written += len(data)

    def stopping(self) -> None:
        if self._pipe is not None:
            self._pipe.stopping()

    def reader_gone(self) -> bool:
        """Wireshark's window was closed (its process ended)."""
        return self._proc is None or self._proc.poll() is not None

    def close(self) -> int:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
        self._proc = None
        return self.bytes_written
