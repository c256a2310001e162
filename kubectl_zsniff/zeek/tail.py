"""Zeek's logs named while Zeek writes them: a tail of each raw log, enriched line by line.

Zeek writes its logs in `raw/`; each new whole line is passed on within `POLL_SECONDS`:
- to the enriched copy of that log in the output folder, through the same enrichment as the
  offline `enrich` (one thread per log runs `enrich_lines` over the lines as they come), so the
  finished copy equals `kubectl zsniff enrich raw/LOG` byte for byte;
- to the JSON-lines stream (`JsonRows`), whole lines only.
A line is passed on only once its line end is there: Zeek may be in the middle of writing it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.names.map import NameSource, as_lookup
from kubectl_zsniff.zeek.jsonl import JsonRows, JsonStats, path_of_file
from kubectl_zsniff.zeek.logs import Columns, FileSummary, enrich_lines, is_log_name
from kubectl_zsniff.zeek.select import RowSelection

#: How often the raw logs are looked at: a row is named at most this long after Zeek wrote it.
POLL_SECONDS = 0.25


class _LogTail:
    """One raw log: new whole lines -> its enriched copy (a thread) and the JSON stream."""

    def __init__(self, tailer: LogTailer, name: str) -> None:
        self.tailer = tailer
        self.name = name
        self.raw = tailer.raw_dir / name
        self.fh: IO[bytes] | None = None
        self.partial = b""
        self.summary = FileSummary(self.raw)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.json: JsonRows | None = None
        self.out: IO[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        path = path_of_file(name)
        wanted = tailer.selection is None or tailer.selection.wants_log(path)
        # With a selection the rows are read even when no stream wants them: the summary
        # counts what was kept and dropped of every log.
        if tailer.json_write is not None or tailer.selection is not None:
            self.json = JsonRows(as_lookup(tailer.namemap) if tailer.namemap else None, path,
                                 tailer.context, tailer.selection, tailer.json_stats)
        if tailer.out_dir is not None and tailer.open_copy is not None and wanted:
            self.out = tailer.open_copy(tailer.out_dir / name)
            self.summary.output = tailer.out_dir / name
            self.thread = threading.Thread(target=self._enrich, name=f"zeek-{name}",
                                           daemon=True)
            self.thread.start()

    def poll(self, final: bool = False) -> None:
        if self.fh is None:
            try:
                self.fh = open(self.raw, "rb")  # noqa: SIM115 - kept open while Zeek writes
            except OSError:
                return
        data = self.fh.read()
        if not data and not (final and self.partial):
            return
        data = self.partial + data
        end = len(data) if final else data.rfind(b"\n") + 1
        self.partial = data[end:]
        lines = data[:end].splitlines(keepends=True)
        if not lines:
            return
        if self.thread is not None:
            for line in lines:
                self.lines.put(line)
        if self.json is not None and self.tailer.json_failure is None:
            batch = [out for line in lines if (out := self.json.feed(line)) is not None]
            if batch and self.tailer.json_write is not None:
                try:
                    self.tailer.json_write(b"".join(batch))
                except ZsniffError as exc:
                    # The stream's reader went away (or its disk is full): the named logs
                    # in DIR go on; the failure is reported when Zeek is done.
                    self.tailer.json_failure = exc

    def _incoming(self) -> Iterator[bytes]:
        while True:
            if self.lines.empty() and self.out is not None:
                self.out.flush()  # before waiting: what is enriched so far is in the file
            line = self.lines.get()
            if line is None:
                return
            yield line

    def _enrich(self) -> None:
        out = self.out
        assert out is not None
        tailer = self.tailer
        try:
            lookup = tailer.namemap if tailer.namemap is not None else _no_names
            for chunk in enrich_lines(self._incoming(), lookup, self.summary, tailer.columns,
                                      tailer.selection):
                out.write(chunk)
            out.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.failure = exc
            while self.lines.get() is not None:  # let finish() end
                pass

    def finish(self) -> None:
        self.poll(final=True)
        if self.thread is not None:
            self.lines.put(None)
            self.thread.join()
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
        if self.fh is not None:
            self.fh.close()


def _no_names(ip: str, ts: float | None) -> None:
    return None


@dataclass
class TailResult:
    files: list[FileSummary] = field(default_factory=list)
    json_stats: JsonStats | None = None
    failures: list[str] = field(default_factory=list)


class LogTailer:
    """Follows every log Zeek writes in `raw_dir` until `finish()` (after Zeek exited)."""

    def __init__(
        self,
        raw_dir: Path,
        out_dir: Path | None,
        namemap: NameSource | None,
        columns: Columns,
        *,
        open_copy: Callable[[Path], IO[bytes]] | None = None,
        json_write: Callable[[bytes], object] | None = None,
        context: str | None = None,
        selection: RowSelection | None = None,
    ) -> None:
        """`open_copy` creates a named log in `out_dir`; `json_write` takes whole JSON lines
        (both from the caller: this package writes no output of its own)."""
        self.raw_dir = raw_dir
        self.out_dir = out_dir
        self.namemap = namemap
        self.columns = columns
        self.open_copy = open_copy
        self.json_write = json_write
        self.context = context
        self.selection = selection
        self.json_stats = JsonStats()
        self._tails: dict[str, _LogTail] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self.json_failure: ZsniffError | None = None
        self._thread = threading.Thread(target=self._run, name="zeek-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.poll()
            except BaseException as exc:  # noqa: BLE001 - e.g. the JSON reader went away
                self._failure = exc
                return

    def poll(self, final: bool = False) -> None:
        with self._lock:
            try:
                names = sorted(e.name for e in os.scandir(self.raw_dir)
                               if e.is_file() and is_log_name(e.name))
            except OSError:
                return
            for name in names:
                tail = self._tails.get(name)
                if tail is None:
                    tail = self._tails[name] = _LogTail(self, name)
                tail.poll(final)

    def finish(self) -> TailResult:
        """Zeek has exited: the rest of every log, then close everything."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        result = TailResult(json_stats=self.json_stats)
        failure = self._failure
        try:
            if failure is None:
                self.poll(final=True)
        except BaseException as exc:  # noqa: BLE001 - raised below, after closing
            failure = exc
        for name in sorted(self._tails):
            tail = self._tails[name]
            tail.finish()
            if tail.out is not None:
                result.files.append(tail.summary)
            if tail.failure is not None:
                result.failures.append(f"{name}: {tail.failure}")
        if failure is not None:
            raise failure
        if self.json_failure is not None:
            raise self.json_failure
        return result


__all__ = ["LogTailer", "POLL_SECONDS", "TailResult"]
