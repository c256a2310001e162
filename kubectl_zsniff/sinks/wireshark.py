"""A live Wireshark fed through its standard input, with network name resolution on."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks import PipeWriter, ReaderClosed, Sink
from kubectl_zsniff.sinks.results import BytesWritten

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


class WiresharkSink(Sink):
    fmt = OutputFormat.PCAPNG
    label = "Wireshark"

    def __init__(self, title: str, executable: str | None = None) -> None:
        self.argv = wireshark_argv(find_wireshark(executable), title)
        # Its stderr is kept (an anonymous, owner-only file): when Wireshark dies, its own
        # words say why ("could not connect to display" over SSH).
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            # Its own session: Ctrl-C in our terminal stops the capture, not the window
            # the user is reading it in.
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise ZsniffError(
                f"cannot start Wireshark: {exc.strerror}", "", ExitStatus.TOOL_MISSING
            ) from exc
        assert self._proc is not None and self._proc.stdin is not None
        self._pipe: PipeWriter | None = PipeWriter(self._proc.stdin.fileno(), "Wireshark")
        self._process = self._proc  # kept after the pipe is given up, for its exit status
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

    def reader_failure(self) -> ZsniffError | None:
        """Why Wireshark ended, if it failed rather than being closed by the user."""
        proc = self._process
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        code = proc.returncode
        if code is None or code == 0 or -code in _CLOSED_BY_SIGNALS:
            return None  # closed by the user (its window, a kill, the session ending)
        reason = _stderr_reason(self._stderr)
        exit_text = f"signal {-code}" if code < 0 else f"status {code}"
        display = "display" in reason.lower()
        return ZsniffError(
            f"Wireshark failed (exit {exit_text})" + (f": {reason}" if reason else ""),
            "Wireshark needs a display: run it where there is one (DISPLAY, WAYLAND_DISPLAY, "
            "ssh -X), or write a file (-w FILE) and open it later"
            if display else "run Wireshark by itself to see why, or write a file with -w FILE",
            ExitStatus.TOOL_MISSING,
        )

    def close(self) -> BytesWritten:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
        self._proc = None
        with contextlib.suppress(OSError):
            self._stderr.close()
        return BytesWritten(self.bytes_written)


_CLOSED_BY_SIGNALS = {int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP)}
_LOG_PREFIX = re.compile(r"^\s*\*\*\s*\([^)]*\)\s*[\d:.]*\s*\[[^\]]*\]\s*--\s*")


def _stderr_reason(stream: IO[bytes]) -> str:
    """The lines of Wireshark's stderr that say what went wrong, without its log prefixes."""
    try:
        stream.seek(0)
        text = stream.read()[-8192:].decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    flagged = [line for line in text.splitlines() if re.search(r"ERROR|WARNING|rror", line)]
    chosen = [_LOG_PREFIX.sub("", line).strip() for line in flagged][:2] or lines[-1:]
    return "; ".join(chosen)[:300]
