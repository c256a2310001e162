"""Zeek log enrichment against the real logs Zeek wrote for real traces (tests/../shared/data)."""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from parsezeeklogs import ZeekLog

from kubectl_zsniff.names.map import DictNameMap, PodName, normalize_ip
from kubectl_zsniff.zeek.logs import (
    NEW_FIELDS_ALL,
    detect_format,
    enrich_bytes,
    enrich_directory,
    enrich_file,
    enrich_paths,
    read_tsv,
)
from tests.shared_data import ZEEK_DATA

DATA = ZEEK_DATA
DECANON = sorted((DATA / "decanon").glob("*")) if (DATA / "decanon").is_dir() else []
BASELINES = sorted(p for p in (DATA / "baselines").glob("*/*") if p.name != "output")
BASELINE_TSV = [p for p in BASELINES if not p.name.endswith(".json")]
RAW_JSON = [p for p in BASELINES if p.name.endswith(".json")]

pytestmark = pytest.mark.skipif(not DECANON, reason=f"no Zeek test data under {DATA}")


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


# --- a name map made for the addresses really in the logs ------------------------------------


def _addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for path in DECANON:
        for record in ZeekLog(path):
            for key in ("id.orig_h", "id.resp_h"):
                if record.get(key):
                    found.add(ipaddress.ip_address(record[key]))
    return sorted(found, key=lambda a: (a.version, int(a)))


def _name_table() -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, PodName]:
    """Every other address gets a name (so every log has named and unknown endpoints); kinds
    and workloads vary so every column is exercised."""
    table = {}
    for i, addr in enumerate(_addresses()):
        if i % 2:
            continue
        if i % 8 == 0:
            table[addr] = PodName(f"ns{i % 3}/web-{i}", f"ns{i % 3}", "pod", f"deployment/web{i}")
        elif i % 8 == 2:
            table[addr] = PodName(f"ns{i % 3}/svc/api{i}", f"ns{i % 3}", "service")
        elif i % 8 == 4:
            table[addr] = PodName(f"node/worker-{i}", None, "node")
        else:
            table[addr] = PodName(f"ns{i % 3}/db-{i}", f"ns{i % 3}", "pod")
    return table


TABLE = _name_table() if DECANON else {}
# IPv6 keys in their long form: the map must still match Zeek's compressed text.
NAMEMAP = DictNameMap({addr.exploded: name for addr, name in TABLE.items()})
COLUMNS = list(NEW_FIELDS_ALL)  # the table has workloads, so all six columns


def _expected(orig: str | None, resp: str | None) -> dict[str, str | None]:
    def get(addr: str | None) -> PodName | None:
        if addr in (None, "-"):
            return None
        return TABLE.get(ipaddress.ip_address(addr))

    def attr(name: PodName | None, key: str) -> str | None:
        return None if name is None else getattr(name, key)

    o, r = get(orig), get(resp)
    return {
        f"{side}_{col}": attr(n, "name" if col == "pod" else col)
        for col in ("pod", "namespace", "workload")
        for side, n in (("orig", o), ("resp", r))
    }


def test_name_map_names_the_logs_addresses_as_zeek_writes_them() -> None:
    """The map was given long-form IPv6 keys; Zeek writes compressed IPv6 (and some tools
    IPv4-mapped IPv6 or a zone): each form finds its name, and unnamed addresses find none."""
    addresses = _addresses()
    named_v6 = [a for a in addresses if a.version == 6 and a in TABLE]
    assert named_v6 and len(TABLE) < len(addresses)  # the logs exercise both cases
    for addr in addresses:
        assert NAMEMAP.lookup(str(addr)) == TABLE.get(addr), addr
        assert NAMEMAP.lookup(str(addr).upper()) == TABLE.get(addr), addr
    assert NAMEMAP.lookup(f"{named_v6[0]}%eth0") == TABLE[named_v6[0]]
    named_v4 = next(a for a in addresses if a.version == 4 and a in TABLE)
    assert NAMEMAP.lookup(f"::ffff:{named_v4}") == TABLE[named_v4]
    assert NAMEMAP.lookup("-") is None and NAMEMAP.lookup("not-an-address") is None


# --- TSV: byte-for-byte, cell by cell ---------------------------------------------------------


def _check_tsv(original: bytes, enriched: bytes) -> tuple[int, int]:
    """Line by line: originals are a prefix, new cells right, #fields/#types describe rows."""
    olines = original.splitlines(keepends=True)
    elines = enriched.splitlines(keepends=True)
    assert len(olines) == len(elines)
    fields: list[str] = []
    efields: list[str] = []
    rows = named = 0
    for o, e in zip(olines, elines, strict=True):
        if o.startswith(b"#fields\t"):
            fields = o.rstrip(b"\n").decode().split("\t")[1:]
            assert e == o.rstrip(b"\n") + ("\t" + "\t".join(COLUMNS)).encode() + b"\n"
            efields = e.rstrip(b"\n").decode().split("\t")[1:]
        elif o.startswith(b"#types\t"):
            types = e.rstrip(b"\n").decode().split("\t")[1:]
            assert e == o.rstrip(b"\n") + ("\tstring" * len(COLUMNS)).encode() + b"\n"
            assert len(types) == len(efields)
        elif o.startswith(b"#"):
            assert e == o  # every other header line is untouched
        else:
            rows += 1
            body = o.rstrip(b"\n")
            assert e.startswith(body + b"\t") and e.endswith(b"\n")
            ocells = body.split(b"\t")
            ecells = e.rstrip(b"\n").split(b"\t")
            assert len(ecells) == len(efields) == len(fields) + len(COLUMNS)
            assert ecells[: len(ocells)] == ocells  # cell by cell
            row = dict(zip(fields, (c.decode() for c in ocells), strict=True))
            want = _expected(row["id.orig_h"], row["id.resp_h"])
            got = dict(zip(COLUMNS, (c.decode() for c in ecells[len(ocells) :]), strict=True))
            assert got == {k: (v if v is not None else "-") for k, v in want.items()}
            named += bool(want["orig_pod"] or want["resp_pod"])
    return rows, named


@pytest.mark.parametrize(
    "path",
    [p for p in DECANON if not p.name.endswith(".json")] + BASELINE_TSV,
    ids=_ids([p for p in DECANON if not p.name.endswith(".json")] + BASELINE_TSV),
)
def test_every_real_tsv_log_keeps_its_bytes_and_gets_names(path: Path, tmp_path: Path) -> None:
    out = tmp_path / path.name
    summary = enrich_file(path, NAMEMAP, out)
    assert summary.skipped is None and summary.format == "tsv"
    assert summary.added_fields == tuple(COLUMNS)
    rows, named = _check_tsv(path.read_bytes(), out.read_bytes())
    assert rows > 0 and summary.rows == summary.enriched_rows == rows
    assert summary.named_rows == named
    assert summary.bad_lines == 0


@pytest.mark.parametrize("path", DECANON, ids=_ids(DECANON))
def test_parsezeeklogs_reads_the_enriched_logs_back(path: Path, tmp_path: Path) -> None:
    out = tmp_path / path.name
    enrich_file(path, NAMEMAP, out)
    before = list(ZeekLog(path))
    with ZeekLog(out) as log:
        after = list(log)
        if not log.is_json:
            assert log.fields[-len(COLUMNS) :] == COLUMNS
            assert all(log.types[c] == "string" for c in COLUMNS)
        assert log.skipped == 0
    assert len(before) == len(after) > 0
    for old, new in zip(before, after, strict=True):
        assert {k: new[k] for k in old} == old
        want = _expected(old.get("id.orig_h"), old.get("id.resp_h"))
        for key in COLUMNS:
            # JSON omits unknown keys (Zeek's convention); TSV writes the unset marker.
            assert new.get(key) == want[key]


JSON_LOGS = [p for p in DECANON if p.name.endswith(".json")]


@pytest.mark.parametrize("path", JSON_LOGS, ids=_ids(JSON_LOGS))
def test_json_log_is_spliced_not_reserialised(path: Path, tmp_path: Path) -> None:
    out = tmp_path / path.name
    summary = enrich_file(path, NAMEMAP, out)
    assert summary.format == "json" and summary.skipped is None
    olines = path.read_bytes().splitlines()
    elines = out.read_bytes().splitlines()
    assert len(olines) == len(elines)
    for o, e in zip(olines, elines, strict=True):
        # The original text up to its final brace is kept exactly: Zeek's \\x07 and UTF-8.
        assert e.startswith(o[:-1]) and e.endswith(b"}")
        old, new = json.loads(o), json.loads(e)
        assert {k: new[k] for k in old} == old
        want = {k: v for k, v in _expected(old["id.orig_h"], old["id.resp_h"]).items() if v}
        assert {k: new[k] for k in new if k not in old} == want
    assert b"\\\\x07" in out.read_bytes()


@pytest.mark.parametrize("path", RAW_JSON, ids=_ids(RAW_JSON))
def test_canonified_json_baseline_that_does_not_parse_is_left_alone(
    path: Path, tmp_path: Path
) -> None:
    data = path.read_bytes()
    out, summary = enrich_bytes(data, NAMEMAP)
    assert out == data
    assert summary.skipped and "malformed" in summary.skipped
    assert summary.bad_lines == summary.rows > 0


def test_ipv6_logs_get_names_whatever_the_text_form(tmp_path: Path) -> None:
    names: dict[str, PodName | str] = {
        "2001:0470:1f11:081f:c999:0d94:aa7c:2e3e": "dev/ftp-client",
        "2001:470:4867:99:0:0:0:21": "dev/svc/ftp",
        "2001:470:1f11:81f:d138:5f55:6d4:1fe2": PodName("dev/resolver", "dev", "pod", "ds/r"),
        "2607:f740:b:0::f93": "node/edge-1",
    }
    namemap = DictNameMap(names)
    for name in ("ftp-ipv6_conn.log", "ftp-ipv6_ftp.log", "ipv6-frag_dns.log"):
        (path,) = [p for p in DECANON if p.name.endswith(name)]
        out, summary = enrich_bytes(path.read_bytes(), namemap)
        assert summary.named_rows == summary.rows > 0
        records = list(ZeekLog(_write(tmp_path / name, out)))
        assert all(r["orig_pod"] and r["resp_pod"] for r in records)
    assert records[0]["orig_workload"] == "ds/r" and records[0]["resp_namespace"] is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- structure: blocks, logs without addresses, idempotence ------------------------------------

LOADED_SCRIPTS = (
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
    b"#path\tloaded_scripts\n#open\t2024-01-01-00-00-00\n#fields\tname\n#types\tstring\n"
    b"/usr/local/zeek/share/zeek/base/init-bare.zeek\n#close\t2024-01-01-00-00-01\n"
)


def _decanon(suffix: str) -> bytes:
    (path,) = [p for p in DECANON if p.name.endswith(suffix)]
    return path.read_bytes()


def test_log_without_connection_ids_is_left_unchanged_and_reported() -> None:
    out, summary = enrich_bytes(LOADED_SCRIPTS, NAMEMAP)
    assert out == LOADED_SCRIPTS
    assert summary.skipped == "no id.orig_h/id.resp_h fields"
    assert summary.log_paths == ["loaded_scripts"]


def test_concatenated_header_blocks_are_handled_per_block() -> None:
    conn, dns = _decanon("opt.basic_conn.log"), _decanon("flip_dns.log")
    data = conn + LOADED_SCRIPTS + dns
    out, summary = enrich_bytes(data, NAMEMAP)
    n_conn = len(conn.splitlines())
    n_ls = len(LOADED_SCRIPTS.splitlines())
    lines = out.splitlines(keepends=True)
    _check_tsv(conn, b"".join(lines[:n_conn]))
    assert b"".join(lines[n_conn : n_conn + n_ls]) == LOADED_SCRIPTS
    _check_tsv(dns, b"".join(lines[n_conn + n_ls :]))
    assert summary.log_paths == ["conn", "loaded_scripts", "dns"]
    # every row in the result has as many cells as the #fields above it
    for header, cells in read_tsv(_write_tmp(out)):
        assert header.fields is not None and len(cells) == len(header.fields)


def _write_tmp(data: bytes) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".log")
    os.write(fd, data)
    os.close(fd)
    return Path(name)


def test_enriching_twice_changes_nothing_the_second_time() -> None:
    once, _ = enrich_bytes(_decanon("opt.basic_http.log"), NAMEMAP)
    twice, summary = enrich_bytes(once, NAMEMAP)
    assert twice == once
    assert summary.skipped and "already enriched" in summary.skipped
    json_once, _ = enrich_bytes(_decanon("http.log.json"), NAMEMAP)
    json_twice, summary = enrich_bytes(json_once, NAMEMAP)
    assert json_twice == json_once and summary.skipped


def test_workload_columns_only_when_the_map_knows_workloads() -> None:
    plain = DictNameMap({"141.142.220.118": "default/web-1"})
    out, summary = enrich_bytes(_decanon("opt.basic_http.log"), plain)
    assert summary.added_fields == ("orig_pod", "resp_pod", "orig_namespace", "resp_namespace")

    # A bare function says nothing about workloads: the data decides.
    def lookup(ip: str, ts: float | None = None) -> PodName | None:
        if ip != "141.142.220.118":
            return None
        return PodName("default/web-1", "default", "pod", "deployment/web")

    out, summary = enrich_bytes(_decanon("opt.basic_http.log"), lookup)
    assert summary.added_fields == tuple(COLUMNS)
    first = next(ZeekLog(_write_tmp(out)).records())
    assert first["orig_workload"] == "deployment/web" and first["resp_workload"] is None
    out, summary = enrich_bytes(_decanon("opt.basic_http.log"), lookup, with_workload=False)
    assert "orig_workload" not in summary.added_fields
    line = b'{"ts":1.5,"id.orig_h":"141.142.220.118","id.resp_h":"10.1.1.1"}\n'
    out, summary = enrich_bytes(line, lookup)
    assert json.loads(out)["orig_workload"] == "deployment/web"
    out, summary = enrich_bytes(line, lookup, with_workload=False)
    assert "orig_workload" not in json.loads(out)


def test_lookup_gets_each_rows_timestamp() -> None:
    data = _decanon("field-extension_conn.log").replace(
        b"0.000000\tconn\tzeek\t0.000000\tCFSwNi4CNGxcuffo49",
        b"0.000000\tconn\tzeek\t1300475167.096535\tCFSwNi4CNGxcuffo49",
    )
    seen: list[tuple[str, float | None]] = []

    def lookup(ip: str, ts: float | None = None) -> PodName | None:
        seen.append((ip, ts))
        return None

    enrich_bytes(data, lookup, with_workload=False)
    # ts is the 4th column there (after the _write_ts extension fields), not the first
    assert seen[0] == ("173.192.163.128", 1300475167.096535)
    assert seen[2][1] == 0.0
    json_line = b'{"ts":"2011-03-18T19:06:08.721247Z","id.orig_h":"10.0.0.1","id.resp_h":"::1"}\n'
    seen.clear()
    enrich_bytes(json_line, lookup, with_workload=False)
    assert seen == [("10.0.0.1", 1300475168.721247), ("::1", 1300475168.721247)]


def test_names_that_need_escaping_are_escaped_the_zeek_way() -> None:
    odd = DictNameMap({"141.142.220.118": PodName("a\tb\\c", "-", "pod")})
    out, _ = enrich_bytes(_decanon("opt.basic_http.log"), odd, with_workload=False)
    row = out.splitlines()[8].split(b"\t")
    assert row[-4:] == [b"a\\x09b\\\\c", b"-", b"\\x2d", b"-"]
    record = next(ZeekLog(_write_tmp(out)).records())
    assert record["orig_pod"] == "a\tb\\c" and record["orig_namespace"] == "-"


def test_json_edge_cases() -> None:
    namemap = DictNameMap({"10.0.0.1": "ns/a"})
    data = (
        b'{"id.orig_h":"10.0.0.1","id.resp_h":"10.0.0.2"}\n'
        b'{"id.orig_h":"10.0.0.3","id.resp_h":"10.0.0.2"}\n'
        b'{"msg":"no addresses"}\n'
    )
    out, summary = enrich_bytes(data, namemap)
    assert out.splitlines() == [
        b'{"id.orig_h":"10.0.0.1","id.resp_h":"10.0.0.2","orig_pod":"ns/a","orig_namespace":"ns"}',
        b'{"id.orig_h":"10.0.0.3","id.resp_h":"10.0.0.2"}',
        b'{"msg":"no addresses"}',
    ]
    assert (summary.rows, summary.enriched_rows, summary.named_rows) == (3, 2, 1)


def test_format_detection() -> None:
    assert detect_format(_decanon("opt.basic_conn.log")) == "tsv"
    assert detect_format(_decanon("http.log.json")) == "json"
    assert detect_format(b"hello\n") is None
    assert detect_format(b"") is None


def test_normalize_ip() -> None:
    assert normalize_ip("2001:0470:4867:0099:0000:0000:0000:0021") == "2001:470:4867:99::21"
    assert normalize_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("-") is None


# --- files and directories ----------------------------------------------------------------------


def test_enrich_directory_in_place_keeps_modes_and_ignores_other_files(tmp_path: Path) -> None:
    conn = _write(tmp_path / "conn.log", _decanon("opt.basic_conn.log"))
    dns = _write(tmp_path / "dns.log", _decanon("opt.basic_dns.log"))
    scripts = _write(tmp_path / "loaded_scripts.log", LOADED_SCRIPTS)
    other = _write(tmp_path / "zeek.stderr", b"warning\n")
    os.chmod(conn, 0o640)
    os.chmod(dns, 0o604)
    before_scripts = scripts.stat().st_mtime_ns
    results = {s.path.name: s for s in enrich_directory(tmp_path, NAMEMAP)}
    assert set(results) == {"conn.log", "dns.log", "loaded_scripts.log"}
    assert stat.S_IMODE(conn.stat().st_mode) == 0o640
    assert stat.S_IMODE(dns.stat().st_mode) == 0o604
    _check_tsv(_decanon("opt.basic_conn.log"), conn.read_bytes())
    assert results["conn.log"].output == conn and results["conn.log"].rows == 34
    assert results["loaded_scripts.log"].skipped == "no id.orig_h/id.resp_h fields"
    assert scripts.stat().st_mtime_ns == before_scripts  # not rewritten
    assert other.read_bytes() == b"warning\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_enrich_paths_to_an_output_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "conn.log", _decanon("opt.basic_conn.log"))
    _write(src / "loaded_scripts.log", LOADED_SCRIPTS)
    single = _write(tmp_path / "http.log.json", _decanon("http.log.json"))
    gz = tmp_path / "dns.2024-01-01-00-00-00.log.gz"
    gz.write_bytes(gzip.compress(_decanon("opt.basic_dns.log")))
    out = tmp_path / "out"
    results = enrich_paths([src, single, gz, tmp_path / "missing.log"], NAMEMAP, out)
    by_name = {s.path.name: s for s in results}
    assert by_name["missing.log"].skipped == "no such file or directory"
    assert (src / "conn.log").read_bytes() == _decanon("opt.basic_conn.log")  # source untouched
    _check_tsv(_decanon("opt.basic_conn.log"), (out / "src" / "conn.log").read_bytes())
    assert (out / "src" / "loaded_scripts.log").read_bytes() == LOADED_SCRIPTS  # copied along
    assert by_name["http.log.json"].output == out / "http.log.json"
    _check_tsv(_decanon("opt.basic_dns.log"), gzip.decompress((out / gz.name).read_bytes()))
