"""The live tail of Zeek's raw logs (zeek/tail.py) on a real Zeek log written line by line, as
Zeek's writer does: whole lines only, named while written, and at the end exactly the offline
enrichment of the same raw log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO

import pytest

from kubectl_zsniff.zeek.jsonl import JsonRows
from kubectl_zsniff.zeek.logs import Columns, enrich_bytes
from kubectl_zsniff.zeek.tail import LogTailer
from tests.shared_data import ZEEK_DATA
from tests.unit.test_zeek_json import NAMES

CONN = ZEEK_DATA / "decanon" / "opt.basic_conn.log"
JSON_HTTP = ZEEK_DATA / "decanon" / (
    "scripts.base.frameworks.logging.json-non-printable-escaping_http.log.json")
pytestmark = pytest.mark.skipif(not CONN.exists(), reason="no Zeek test data")


def _wait(condition: object, timeout: float = 10.0) -> float:
    """Seconds until `condition()` held (fails after `timeout`)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def _open_copy(path: Path) -> IO[bytes]:
    return open(path, "wb", buffering=0)  # noqa: SIM115 - the tailer closes it


@pytest.mark.parametrize("source", [CONN, JSON_HTTP], ids=["tsv", "json"])
def test_rows_are_named_as_they_are_written_and_the_end_equals_the_offline_enrich(
    source: Path, tmp_path: Path
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    out.mkdir()
    name = "conn.log" if source == CONN else "http.log"
    lines = source.read_bytes().splitlines(keepends=True)
    stream: list[bytes] = []
    tailer = LogTailer(raw, out, NAMES, Columns(True, True), open_copy=_open_copy,
                       json_write=stream.append, context="ctx")
    tailer.start()
    rows = [x for x in lines if not x.startswith(b"#")]
    head = lines[: lines.index(rows[0])]
    latencies = []
    try:
        with open(raw / name, "wb", buffering=0) as log:
            log.write(b"".join(head))
            for i, row in enumerate(rows[:3], 1):
                # Half a row first: Zeek may be in the middle of writing it.
                log.write(row[:10])
                time.sleep(0.3)
                assert sum(x.count(b"\n") for x in stream) == i - 1
                log.write(row[10:])
                latencies.append(_wait(lambda i=i: sum(x.count(b"\n") for x in stream) == i))
                # ...and the row, named, in the copy (its own thread).
                _wait(lambda i=i: (out / name).read_bytes().count(b"\n") == len(head) + i)
                copy = (out / name).read_bytes().splitlines()[-1]
                assert b"_pod" in copy or b"\t" in copy  # JSON: a name key; TSV: its cells
            log.write(b"".join(lines[len(head) + 3:]))
    finally:
        result = tailer.finish()
    expected, _ = enrich_bytes(source.read_bytes(), NAMES, with_workload=True)
    assert (out / name).read_bytes() == expected
    assert [f.path.name for f in result.files] == [name]
    data = b"".join(stream)
    assert all(chunk.endswith(b"\n") for chunk in stream)  # whole lines, every write
    rows_json = JsonRows(NAMES.lookup, name.split(".")[0], "ctx")
    want = [rows_json.feed(x) for x in lines]
    assert data == b"".join(x for x in want if x is not None)
    assert all(json.loads(x)["k8s_context"] == "ctx" for x in data.splitlines())
    # Poll interval 0.25 s: each row is passed on well within a second of its line end.
    print(f"row -> named latencies: {', '.join(f'{x:.2f}s' for x in latencies)}")


def test_a_log_that_appears_later_is_followed_too(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    out.mkdir()
    tailer = LogTailer(raw, out, NAMES, Columns(True, True), open_copy=_open_copy)
    tailer.start()
    try:
        time.sleep(0.3)
        (raw / "dns.log").write_bytes(CONN.read_bytes())
        last = [x for x in CONN.read_bytes().splitlines() if not x.startswith(b"#")][-1]
        # (a trailing #close is held until the log ends: it may be followed by a new block)
        _wait(lambda: (out / "dns.log").exists() and last in (out / "dns.log").read_bytes())
        (raw / "notes.txt").write_text("not a log")
    finally:
        result = tailer.finish()
    assert [f.path.name for f in result.files] == ["dns.log"]
    assert not (out / "notes.txt").exists()
