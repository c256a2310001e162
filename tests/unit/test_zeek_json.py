"""`enrich --json`: every real Zeek log of ../shared/data/zeek as one stream of JSON lines.

Zeek's own fields are checked against readers no one here wrote: Zeek's JSON writer itself (the
same http log written as TSV and as JSON), parsezeeklogs (typed TSV reading, its ECS mapping
for a SIEM) and jq.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from parsezeeklogs import ZeekLog, decode_escapes, to_ecs

from kubectl_zsniff.names.map import DictNameMap, PodName
from kubectl_zsniff.zeek.jsonl import logs_to_json, path_of_file
from kubectl_zsniff.zeek.select import RowSelection
from tests.shared_data import ZEEK_DATA

DECANON = sorted((ZEEK_DATA / "decanon").glob("*")) if (ZEEK_DATA / "decanon").is_dir() else []
pytestmark = pytest.mark.skipif(not DECANON, reason=f"no Zeek test data under {ZEEK_DATA}")

ZSNIFF = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'kubectl-zsniff'; from kubectl_zsniff.cli.app import main; "
          "main()"]
OURS = ("_path", "k8s_context")
SIDE_FIELDS = ("pod", "namespace", "kind", "workload", "workload_kind", "node")


def _log_name(path: Path) -> str:
    """The data's files are `<baseline dir>_<log file>`: the log file's own name."""
    return path.name.rsplit("_", 1)[1]


def _as_logs(tmp_path: Path) -> list[Path]:
    """Each log under the name Zeek gave it (conn.log, http.log.json...), one folder each."""
    out = []
    for i, src in enumerate(DECANON):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        dst = folder / _log_name(src)
        shutil.copyfile(src, dst)
        out.append(dst)
    return out


def _addresses() -> list[str]:
    found: set[str] = set()
    for path in DECANON:
        for record in ZeekLog(path):
            for key in ("id.orig_h", "id.resp_h"):
                if record.get(key):
                    found.add(str(ipaddress.ip_address(record[key])))
    return sorted(found)


def _table() -> dict[str, PodName]:
    """A name for two of every three addresses (the third stays unknown), in 3 namespaces,
    pods with and without workloads, services and nodes."""
    table = {}
    for i, addr in enumerate(_addresses()):
        ns = f"ns{i % 3}"
        if i % 3 == 2:
            continue
        if i % 4 == 0:
            table[addr] = PodName(f"{ns}/web-{i}", ns, "pod", f"deployment/web{i % 2}", f"n{i}")
        elif i % 4 == 1:
            table[addr] = PodName(f"{ns}/svc/api{i}", ns, "service")
        elif i % 8 == 2:
            table[addr] = PodName(f"node/worker-{i}", None, "node", None, f"worker-{i}")
        else:
            table[addr] = PodName(f"{ns}/db-{i}", ns, "pod", None, f"n{i}")
    return table


TABLE = _table() if DECANON else {}
NAMES = DictNameMap(TABLE)


def _expected_names(row: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for side, key in (("orig", "id.orig_h"), ("resp", "id.resp_h")):
        addr = row.get(key)
        name = TABLE.get(str(ipaddress.ip_address(addr))) if addr else None
        if name is None:
            continue
        out[f"{side}_pod"] = name.name
        if name.namespace:
            out[f"{side}_namespace"] = name.namespace
        out[f"{side}_kind"] = name.kind
        if name.workload:
            out[f"{side}_workload"] = name.workload
            out[f"{side}_workload_kind"] = name.workload.split("/")[0]
        if name.node:
            out[f"{side}_node"] = name.node
    return out


def _split(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Zeek's fields, ours) of one output line."""
    ours = {k for k in obj if k in OURS or k.split("_", 1)[-1] in SIDE_FIELDS
            and k.split("_", 1)[0] in ("orig", "resp")}
    return {k: v for k, v in obj.items() if k not in ours}, {k: obj[k] for k in ours}


def _stream(paths: list[Path], selection: RowSelection | None = None) -> list[bytes]:
    chunks: list[bytes] = []
    stats, unusable = logs_to_json(paths, NAMES.lookup, chunks.append, context="prod-eu",
                                   selection=selection)
    assert not unusable and stats.bad_lines == 0
    data = b"".join(chunks)
    assert data.endswith(b"\n")
    return data.splitlines()


def _zeek_rows(path: Path) -> list[dict[str, Any]]:
    """Each row as parsezeeklogs reads it, unset fields left out (as Zeek's JSON does)."""
    return [{k: v for k, v in r.items() if v is not None} for r in ZeekLog(path)]


@pytest.mark.parametrize("src", DECANON, ids=[p.name for p in DECANON])
def test_every_log_becomes_json_lines_with_zeeks_fields_untouched_and_both_ends_named(
    src: Path, tmp_path: Path
) -> None:
    (path,) = [p for p in _as_logs(tmp_path) if p.parent.name == f"run{DECANON.index(src)}"]
    lines = _stream([path])
    rows = _zeek_rows(path)
    assert len(lines) == len(rows) > 0
    expected_path = path_of_file(path.name)
    tsv = not src.name.endswith(".json")
    for line, row in zip(lines, rows, strict=True):
        obj = json.loads(line)
        assert isinstance(obj, dict) and next(iter(obj)) == "_path"
        assert obj["_path"] == expected_path
        assert obj["k8s_context"] == "prod-eu"
        zeek, ours = _split(obj)
        # Zeek's fields: every one of them, same values, same order.
        assert list(zeek) == list(row)
        for key, value in row.items():
            got = zeek[key]
            if tsv and isinstance(got, str) and got != value:
                # parsezeeklogs decodes TSV's \xHH; Zeek's JSON writer keeps the text (the
                # test below holds it to that), so literal and escaped bytes read alike.
                assert decode_escapes(got) == decode_escapes(value.replace("\\", "\\\\")) \
                    or decode_escapes(got) == value, key
                continue
            assert got == value or (isinstance(value, float) and got == pytest.approx(value)), key
        assert {k: v for k, v in ours.items() if k not in OURS} == _expected_names(row)
    if src.name.endswith(".json"):
        # A JSON log keeps Zeek's bytes: only `_path` and the names are spliced in.
        for line, original in zip(lines, src.read_bytes().splitlines(), strict=True):
            body = original.strip()[1:-1]
            assert body in line and line.startswith(b'{"_path":"http",' + body)


def test_tsv_rows_come_out_as_zeeks_own_json_writer_wrote_the_same_rows() -> None:
    """Zeek logged one HTTP trace twice, as TSV and as JSON: the TSV through zsniff gives
    Zeek's JSON objects (escapes, empty sets, left-out unset fields, 0.000000 included)."""
    base = "scripts.base.frameworks.logging.json-non-printable-escaping_http.log"
    tsv = ZEEK_DATA / "decanon" / f"{base}.tsv"
    zeek_json = (ZEEK_DATA / "decanon" / f"{base}.json").read_bytes().splitlines()
    lines = _stream([tsv])
    assert len(lines) == len(zeek_json) == 4
    for line, theirs in zip(lines, zeek_json, strict=True):
        zeek, _ = _split(json.loads(line))
        assert zeek == json.loads(theirs)
        # Byte for byte too, for the fields Zeek wrote.
        body = theirs[1:-1]
        assert line.startswith(b'{"_path":"http",' + body + b",")


def test_cli_enrich_json_stream_read_by_jq_and_a_siem_style_loader(tmp_path: Path) -> None:
    """The real command over every log at once (a hosts file as the name map), piped into jq;
    the same stream loaded by parsezeeklogs and mapped to ECS as a SIEM loader would."""
    if shutil.which("jq") is None:
        pytest.skip("jq not installed (scripts/setup installs it)")
    paths = _as_logs(tmp_path)
    hosts = tmp_path / "k8s.hosts"
    hosts.write_text("".join(f"{ip}\t{name.name}\n" for ip, name in TABLE.items()))
    cmd = [*ZSNIFF, "enrich", "--json", "-",
           "--names-from", str(hosts), *map(str, paths)]
    done = subprocess.run(cmd, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    total = sum(len(_zeek_rows(p)) for p in paths)
    lines = done.stdout.splitlines()
    assert len(lines) == total
    assert f"{total} JSON lines to standard output".encode() in done.stderr
    jq = subprocess.run(["jq", "-c", "[._path, .\"id.orig_h\", .orig_pod]"], input=done.stdout,
                        capture_output=True, timeout=30, check=True)
    seen = [json.loads(x) for x in jq.stdout.splitlines()]
    assert len(seen) == total
    assert {s[0] for s in seen} == {"conn", "dns", "http", "ftp"}
    for _, orig, pod in seen:
        want = TABLE.get(str(ipaddress.ip_address(orig))) if orig else None
        assert pod == (want.name if want else None)
    # parsezeeklogs reads the stream as a JSON Zeek log; each record mapped to ECS by its _path.
    out = tmp_path / "stream.json"
    out.write_bytes(done.stdout)
    records = list(ZeekLog(out))
    docs = [to_ecs(r, r["_path"]) for r in records]
    assert len(docs) == total
    conn = [(r, d) for r, d in zip(records, docs, strict=True) if r["_path"] == "conn"]
    assert len(conn) == sum(len(_zeek_rows(p)) for p in paths if p.name == "conn.log")
    for record, doc in conn:
        assert doc["event"]["dataset"] == "zeek.connection"
        assert doc["source"]["ip"] == record["id.orig_h"]
        want = TABLE.get(str(ipaddress.ip_address(record["id.orig_h"])))
        assert doc["zeek"]["connection"].get("orig_pod") == (want.name if want else None)


def test_cli_enrich_json_to_a_file_is_owner_only_and_refuses_an_existing_one(
    tmp_path: Path
) -> None:
    paths = _as_logs(tmp_path)[:2]
    out = tmp_path / "zeek.jsonl"
    hosts = tmp_path / "one.hosts"
    hosts.write_text("10.9.9.9\tns/pod\n")
    cmd = [*ZSNIFF, "enrich", "--json", str(out), "--names-from", str(hosts), *map(str, paths)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert all(json.loads(x)["_path"] for x in out.read_text().splitlines())
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 16 and again.stderr.startswith("error: ")
    assert "hint: " in again.stderr and "Traceback" not in again.stderr


def test_cli_enrich_json_of_a_file_that_is_not_a_log_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nworld\n")
    hosts = tmp_path / "one.hosts"
    hosts.write_text("10.9.9.9\tns/pod\n")
    done = subprocess.run(
        [*ZSNIFF, "enrich", "--json", "-", "--names-from", str(hosts), str(bad)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not a Zeek log" in done.stderr and "Traceback" not in done.stderr
