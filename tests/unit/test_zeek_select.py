"""The volume knob (--logs/--only offline, --zeek-logs/--zeek-only live) on the real Zeek logs:
what each rule keeps, what it drops, and the per-log counts the summary gives."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from parsezeeklogs import ZeekLog

from kubectl_zsniff.names.map import PodName
from kubectl_zsniff.sinks.zeek import ZeekSink
from kubectl_zsniff.zeek.jsonl import logs_to_json
from kubectl_zsniff.zeek.logs import enrich_paths
from kubectl_zsniff.zeek.select import FlowRule, RowSelection, SelectionError
from tests.unit.test_zeek_json import DECANON, NAMES, TABLE, ZSNIFF, _as_logs

pytestmark = pytest.mark.skipif(not DECANON, reason="no Zeek test data")


def _name(addr: Any) -> PodName | None:
    return TABLE.get(str(ipaddress.ip_address(addr))) if addr else None


def _all_rows(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in paths:
        for r in ZeekLog(p):
            out.append((p.name.split(".", 1)[0], r))
    return out


def _run(paths: list[Path], selection: RowSelection) -> tuple[list[dict[str, Any]], Any]:
    chunks: list[bytes] = []
    stats, unusable = logs_to_json(paths, NAMES.lookup, chunks.append, selection=selection)
    assert not unusable
    return [json.loads(x) for x in b"".join(chunks).splitlines()], stats


def _expect(paths: list[Path], keep: Any) -> dict[str, tuple[int, int]]:
    """Per log: (kept, dropped) by the rule written out again, independently, here."""
    counts: dict[str, list[int]] = {}
    for path, r in _all_rows(paths):
        entry = counts.setdefault(path, [0, 0])
        entry[0 if keep(path, r) else 1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _counts(stats: Any) -> dict[str, tuple[int, int]]:
    return {k: (c.kept, c.dropped) for k, c in stats.counts.logs.items()}


def _ns(name: PodName | None) -> str | None:
    return None if name is None else name.namespace


RULES: dict[str, Any] = {
    "leaves-namespace": lambda o, r: _ns(o) != _ns(r) and (_ns(o) or _ns(r)) is not None,
    "unknown": lambda o, r: o is None or r is None,
    "workload=web0": lambda o, r: any(n is not None and n.workload == "deployment/web0"
                                      for n in (o, r)),
    "namespace=ns1": lambda o, r: "ns1" in (_ns(o), _ns(r)),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_flow_rule_keeps_what_it_says_and_drops_the_rest(rule: str, tmp_path: Path) -> None:
    paths = _as_logs(tmp_path)
    rows, stats = _run(paths, RowSelection.parse(None, [rule]))
    check = RULES[rule]

    def keep(path: str, r: dict[str, Any]) -> bool:
        if "id.orig_h" not in r:
            return False  # no flow: flow rules drop it
        return bool(check(_name(r["id.orig_h"]), _name(r["id.resp_h"])))

    want = _expect(paths, keep)
    assert _counts(stats) == want
    assert sum(k for k, _ in want.values()) == len(rows) > 0
    assert sum(d for _, d in want.values()) > 0  # each rule drops something in these logs
    for row in rows:
        assert check(_name(row["id.orig_h"]), _name(row["id.resp_h"]))


def test_rules_together_keep_a_row_matching_any(tmp_path: Path) -> None:
    paths = _as_logs(tmp_path)
    both, _ = _run(paths, RowSelection.parse(None, ["unknown", "namespace=ns1"]))
    one, _ = _run(paths, RowSelection.parse(None, ["unknown"]))
    other, _ = _run(paths, RowSelection.parse(None, ["namespace=ns1"]))
    key = lambda r: (r["_path"], r["uid"], r.get("trans_id"), r.get("trans_depth"))  # noqa: E731
    assert {key(r) for r in both} == {key(r) for r in one} | {key(r) for r in other}


def test_logs_keeps_only_the_named_logs_and_counts_the_others_as_dropped(
    tmp_path: Path
) -> None:
    paths = _as_logs(tmp_path)
    rows, stats = _run(paths, RowSelection.parse("conn,dns", []))
    assert {r["_path"] for r in rows} == {"conn", "dns"}
    want = _expect(paths, lambda path, r: path in ("conn", "dns"))
    assert _counts(stats) == want and want["http"][0] == 0 and want["http"][1] > 0


def test_offline_enrich_of_tsv_logs_with_a_rule_drops_rows_and_keeps_the_header_right(
    tmp_path: Path
) -> None:
    paths = [p for p in _as_logs(tmp_path) if not p.name.endswith(".json")]
    selection = RowSelection.parse(None, ["unknown"])
    results = [r for p in paths
               for r in enrich_paths([p], NAMES, tmp_path / "out" / p.parent.name,
                                     selection=selection)]
    assert results and sum(r.dropped for r in results) > 0
    for result in results:
        assert result.output is not None
        got = list(ZeekLog(result.output))  # an independent reader: #fields still match rows
        assert len(got) == result.kept
        assert all(r["orig_pod"] is None or r["resp_pod"] is None for r in got)


def test_cli_knob_flags_and_their_summary(tmp_path: Path) -> None:
    paths = _as_logs(tmp_path)
    hosts = tmp_path / "k8s.hosts"
    hosts.write_text("".join(f"{ip}\t{name.name}\n" for ip, name in TABLE.items()))
    done = subprocess.run(
        [*ZSNIFF, "enrich", "--json", "-", "--names-from", str(hosts), "--logs", "conn,dns",
         "--only", "unknown", *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert lines and {r["_path"] for r in lines} <= {"conn", "dns"}
    # "conn K kept, D dropped; dns ...; http 0 kept, N dropped" in the summary line
    assert "conn " in done.stderr and " kept, " in done.stderr and " dropped" in done.stderr
    bad = subprocess.run([*ZSNIFF, "enrich", "--json", "-", "--only", "big", str(paths[0])],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a flow rule" in bad.stderr and "hint:" in bad.stderr


def test_rule_parsing() -> None:
    assert FlowRule.parse("workload=web") == FlowRule("workload", "web")
    for text in ("workload", "workload=", "leaves-namespace=x", "nope"):
        with pytest.raises(SelectionError):
            FlowRule.parse(text)
    with pytest.raises(SelectionError):
        RowSelection.parse(" , ", [])


def test_zeek_sink_counts_kept_and_dropped_rows_per_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live: the selection applies to DIR's named logs; the summary's counts come from them."""
    from tests.unit.test_zeek_sink import GET_CONN, GET_PCAP, _install_stand_in
    from tests.unit.test_zeek_sink import NAMES as SINK_NAMES

    _install_stand_in(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STANDIN_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("STANDIN_LOG", str(GET_CONN))
    out = tmp_path / "z"
    sink = ZeekSink(out, SINK_NAMES, selection=RowSelection.parse(None, ["namespace=nowhere"]))
    sink.write(GET_PCAP.read_bytes())
    summary = sink.close()
    rows = len(list(ZeekLog(GET_CONN)))
    assert summary.counts is not None
    assert {k: (c.kept, c.dropped) for k, c in summary.counts.logs.items()} == {"conn": (0, rows)}
    assert list(ZeekLog(out / "conn.log")) == []  # header only, still a readable log
    assert len(list(ZeekLog(out / "raw" / "conn.log"))) == rows  # Zeek's own log untouched
