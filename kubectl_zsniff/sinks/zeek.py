"""Zeek run locally on the live capture stream; its logs get pod names as Zeek writes them.

Zeek writes in DIR/raw/ (untouched); DIR gets each log named, row by row while Zeek writes
(zeek/tail.py), and the JSON-lines stream (--zeek-json) gets the same rows. Without names
(--no-names) Zeek writes in DIR itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.names.map import DictNameMap, NameSource
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks import ReaderClosed, Sink
from kubectl_zsniff.sinks.feeder import FeederClosed, PipeFeeder
from kubectl_zsniff.sinks.file import open_private
from kubectl_zsniff.sinks.jsonlines import JsonLinesOutput
from kubectl_zsniff.sinks.results import ZeekSummary
from kubectl_zsniff.zeek.logs import Columns
from kubectl_zsniff.zeek.select import RowSelection
from kubectl_zsniff.zeek.tail import LogTailer

# Where Zeek's own packages and source builds install it; neither is on PATH by default.
ZEEK_DIRS: tuple[str, ...] = ("/usr/local/zeek/bin", "/opt/zeek/bin")

INSTALL_HINT = (
    "install Zeek (https://docs.zeek.org/en/current/install.html: packages `zeek` or "
    "`zeek-lts`, macOS `brew install zeek`), put its bin directory on PATH or set ZEEK_HOME "
    "to its install prefix; or capture to a file with -w and run Zeek on it later"
)

STDOUT_NAME = "zeek.stdout"
RAW_DIR = "raw"  # Zeek's own logs, as it wrote them
STDERR_NAME = "zeek.stderr"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_zeek(
    environ: Mapping[str, str] | None = None, extra_dirs: Sequence[str] | None = None
) -> str:
    """The zeek program: $ZEEK_HOME/bin first (an explicit choice), then PATH, then the
    usual install prefixes. Raises a TOOL_MISSING ZsniffError with an install hint."""
    env = os.environ if environ is None else environ
    home = env.get("ZEEK_HOME")
    if home:
        for candidate in (Path(home) / "bin" / "zeek", Path(home) / "zeek"):
            if _executable(candidate):
                return str(candidate)
    found = shutil.which("zeek", path=env.get("PATH", ""))
    if found:
        return found
    for directory in ZEEK_DIRS if extra_dirs is None else extra_dirs:
        candidate = Path(directory) / "zeek"
        if _executable(candidate):
            return str(candidate)
    raise ZsniffError(
        "Zeek is not installed (not on PATH, in $ZEEK_HOME, nor in /usr/local/zeek or /opt/zeek)",
        INSTALL_HINT,
        ExitStatus.TOOL_MISSING,
    )


def refuse_used_directory(directory: Path) -> None:
    """Each run starts in an empty folder: Zeek never deletes old logs, so a folder holding an
    earlier run's would have them listed, and named again, as this run's."""
    try:
        entries = sorted(p.name for p in directory.iterdir())
    except FileNotFoundError:
        return  # created at start
    except NotADirectoryError as exc:
        raise ZsniffError(
            f"--zeek {directory} is a file, not a folder",
            "give --zeek a new or empty folder for this run's logs",
            ExitStatus.OUTPUT_ERROR,
        ) from exc
    except OSError as exc:
        raise ZsniffError(
            f"cannot read the --zeek folder {directory}: {exc.strerror or exc}",
            "give --zeek a new or empty folder you can write to",
            ExitStatus.OUTPUT_ERROR,
        ) from exc
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3
                                          else "")
        raise ZsniffError(
            f"the --zeek folder {directory} is not empty ({shown}); Zeek would mix this run's "
            "logs with those",
            "give --zeek a new or empty folder (e.g. --zeek zeek-$(date +%H%M%S)), or move "
            "the old logs away",
            ExitStatus.OUTPUT_ERROR,
        )


def zeek_argv(executable: str, extra: Sequence[str] = ()) -> list[str]:
    # -C: captures on veth/offloading NICs carry checksums the kernel never filled in; without
    #     it Zeek drops those packets as corrupt and the logs come out nearly empty.
    # -r -: trace mode on standard input: Zeek's clock follows packet times and it stops at EOF.
    #       (`-r /dev/stdin` misbehaves on Zeek >= 8.2.)
    # `extra` (scripts such as `local`, `-e 'redef ...'`) comes last, as Zeek expects scripts.
    return [executable, "-C", "-r", "-", *extra]


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ZeekSink(Sink):
    """Feeds the capture to `zeek -C -r -` running in `directory`, then names its logs."""

    label = "Zeek"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        namemap: NameSource | None = None,
        *,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        wait_timeout: float = 120.0,
        # Zeek reads through libpcap: tcpdump's classic pcap always works; pcapng only for
        # one link type on Zeek < 8.2, and Zeek ignores our name blocks anyway.
        fmt: OutputFormat = OutputFormat.PCAP,
        json_target: str | None = None,
        json_stdout: BinaryIO | None = None,
        selection: RowSelection | None = None,
        context: str | None = None,
        workload_columns: bool | None = None,
    ) -> None:
        # No folder asked for (only --zeek-json): Zeek works in a private one, removed after.
        self._scratch = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="zsniff-zeek-")
        self.directory = Path(directory)
        self.namemap = namemap
        self.json_target = json_target
        self.json_stdout = json_stdout
        self.selection = selection
        self.context = context
        if workload_columns is None:
            # Only a fixed table knows up front; the live capture says (session.open_sinks).
            workload_columns = isinstance(namemap, DictNameMap) and namemap.provides_workload
        # Fixed before Zeek writes a line: every row of a TSV log must match its #fields.
        self.columns = Columns(True, workload_columns)
        self._json_out: JsonLinesOutput | None = None
        self._tailer: LogTailer | None = None
        self.wait_timeout = wait_timeout
        self.fmt = OutputFormat(fmt)
        # Resolved now so a missing Zeek fails before the capture starts, not after.
        self.argv = zeek_argv(executable or find_zeek(), extra_args)
        self.bytes_written = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._feeder: PipeFeeder | None = None
        self._summary: ZeekSummary | None = None

    @property
    def stderr_path(self) -> Path:
        return self.directory / STDERR_NAME

    @property
    def raw_dir(self) -> Path:
        """Where Zeek itself writes (its cwd)."""
        return self.directory / RAW_DIR if self.namemap is not None else self.directory

    def start(self) -> None:
        if self._proc is not None:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.raw_dir.mkdir(mode=0o700, exist_ok=True)
            if self.json_target is not None and self._json_out is None:
                self._json_out = JsonLinesOutput(self.json_target, flag="--zeek-json",
                                                 stdout=self.json_stdout)
            with (
                open_private(self.directory / STDOUT_NAME, 0) as out,
                open_private(self.stderr_path, 0) as err,
            ):
                # Own session: Ctrl-C must stop the capture, not Zeek; closing its stdin then
                # lets Zeek finish the packets already sent and write complete logs.
                self._proc = subprocess.Popen(
                    self.argv,
                    cwd=self.raw_dir,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    bufsize=0,
                    start_new_session=True,
                    # The logs Zeek writes are owner-only, like the captures.
                    umask=0o077,
                )
        except OSError as exc:
            raise ZsniffError(
                f"cannot start Zeek ({self.argv[0]}) in {self.directory}: {exc.strerror or exc}",
                INSTALL_HINT if isinstance(exc, FileNotFoundError) else "",
                ExitStatus.TOOL_MISSING
                if isinstance(exc, FileNotFoundError)
                else ExitStatus.OUTPUT_ERROR,
            ) from exc
        stdin = self._proc.stdin
        assert stdin is not None
        # The feeder owns its own descriptor of the pipe; Popen's file object is closed now
        # so that the pipe ends exactly when the feeder has delivered the last record.
        fd = os.dup(stdin.fileno())
        stdin.close()
        self._feeder = PipeFeeder(fd)
        if self.namemap is not None or self._json_out is not None:
            self._tailer = LogTailer(
                self.raw_dir,
                self.directory if self.namemap is not None and not self._scratch else None,
                self.namemap, self.columns,
                open_copy=lambda path: open_private(path, 0, flag="--zeek"),
                json_write=self._json_out.write if self._json_out is not None else None,
                context=self.context, selection=self.selection,
            )
            self._tailer.start()

    def write(self, data: bytes | memoryview) -> None:
        if self._summary is not None:
            raise ZsniffError("the Zeek sink is already closed", status=ExitStatus.ERROR)
        self.start()
        feeder = self._feeder
        assert feeder is not None
        try:
            # Queued whole, delivered in order by the feeder's thread: a Zeek still loading
            # its scripts when the capture stops gets every record later, never half of one.
            feeder.write(data)
        except FeederClosed as exc:
            raise self._died_error() from exc
        self.bytes_written += len(data)

    def stopping(self) -> None:
        if self._feeder is not None:
            self._feeder.stopping()

    def _died_error(self) -> ZsniffError:
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=5)
        return ZsniffError(
            f"Zeek exited while receiving packets (exit status {code})" + self._stderr_suffix(),
            f"see {self.stderr_path}; check the Zeek scripts and options given",
            ExitStatus.OUTPUT_ERROR,
        )

    def _stderr_suffix(self) -> str:
        tail = _tail(self.stderr_path)
        return f": {tail.splitlines()[-1]}" if tail else ""

    def close(self) -> ZeekSummary:
        """End of capture: let Zeek finish, check it succeeded, add names to its logs."""
        if self._summary is not None:
            return self._summary
        proc = self._proc
        summary = ZeekSummary(self.directory, None, self.bytes_written)
        self._summary = summary
        if proc is None:
            return summary  # nothing was captured: Zeek never ran
        feeder = self._feeder
        assert feeder is not None
        deadline = time.monotonic() + self.wait_timeout
        timed_out = not feeder.finish(self.wait_timeout)
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            proc.terminate()  # Zeek flushes its logs on SIGTERM
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            feeder.abandon()
        summary.returncode = proc.returncode
        # Names go on whatever Zeek wrote even when it failed: partial logs still help.
        try:
            self._finish_tail(summary)
        finally:
            self._cleanup()
        if timed_out:
            raise ZsniffError(
                f"Zeek did not finish within {self.wait_timeout:g}s after the capture ended "
                "and was stopped; its logs may be incomplete",
                f"see {self.stderr_path}; heavy scripts may need a longer wait",
                ExitStatus.OUTPUT_ERROR,
            )
        if proc.returncode != 0:
            raise ZsniffError(
                f"Zeek failed (exit status {proc.returncode})" + self._stderr_suffix(),
                f"see {self.stderr_path}",
                ExitStatus.OUTPUT_ERROR,
            )
        return summary

    def _finish_tail(self, summary: ZeekSummary) -> None:
        tailer = self._tailer
        if tailer is None:
            return
        self._tailer = None
        if self._json_out is not None:
            self._json_out.stopping()  # Zeek is done: a reader that takes nothing is given up
        try:
            result = tailer.finish()
        except ReaderClosed:
            summary.json_to = self._json_out.where if self._json_out else None
            raise
        summary.files = result.files
        if self._json_out is not None:
            summary.json_lines = self._json_out.lines
            summary.json_to = self._json_out.where
        if self.selection is not None and not self.selection.everything:
            summary.counts = result.json_stats.counts if result.json_stats else None
        if result.failures:
            raise ZsniffError(
                "naming Zeek's logs failed: " + "; ".join(result.failures),
                f"the raw logs are in {self.raw_dir}; kubectl zsniff enrich can name them",
                ExitStatus.OUTPUT_ERROR,
            )

    def _cleanup(self) -> None:
        if self._json_out is not None:
            self._json_out.close()
        if self._scratch:
            shutil.rmtree(self.directory, ignore_errors=True)
