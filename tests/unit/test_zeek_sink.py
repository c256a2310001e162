"""ZeekSink. No Zeek can be installed here, so these tests put a STAND-IN `zeek` program first
on PATH: it records its argv, reads stdin to EOF, checks the pcap/pcapng magic and writes a
copy of a conn.log that real Zeek wrote for the same trace. It proves the plumbing (arguments,
every byte delivered, exit status handling, enrichment of the logs), not Zeek itself."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import sys
from pathlib import Path

import pytest
from parsezeeklogs import ZeekLog

import kubectl_zsniff.sinks.zeek as zeek_mod
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.names.map import DictNameMap, PodName
from kubectl_zsniff.sinks.zeek import ZeekSink, find_zeek
from tests.shared_data import ZEEK_DATA

DATA = ZEEK_DATA
GET_PCAP = DATA / "traces" / "http" / "get.pcap"
MULTI_PCAPNG = DATA / "traces" / "pcapng-multi-interface.pcapng"
GET_CONN = DATA / "decanon" / "core.tcp.reassembly-known-ports_conn.log"
MULTI_CONN = DATA / "decanon" / "core.pcapng-pktsrc_conn.log"

pytestmark = pytest.mark.skipif(not GET_PCAP.is_file(), reason=f"no Zeek test data in {DATA}")

STAND_IN = """#!{python}
import hashlib, json, os, shutil, sys, time
mode = os.environ.get("STANDIN_MODE", "ok")
if mode == "exit-early":
    sys.stderr.write("error in ./bad.zeek, line 1: syntax error\\n")
    sys.exit(1)
data = sys.stdin.buffer.read()
with open(os.environ["STANDIN_RECORD"], "w") as fh:
    json.dump({{"argv": sys.argv, "cwd": os.getcwd(), "size": len(data),
               "sha256": hashlib.sha256(data).hexdigest()}}, fh)
magics = (b"\\xd4\\xc3\\xb2\\xa1", b"\\xa1\\xb2\\xc3\\xd4", b"\\x4d\\x3c\\xb2\\xa1",
          b"\\xa1\\xb2\\x3c\\x4d", b"\\x0a\\x0d\\x0d\\x0a")
if data[:4] not in magics:
    sys.stderr.write("fatal error: problem with trace file - (unknown file format)\\n")
    sys.exit(1)
shutil.copyfile(os.environ["STANDIN_LOG"], "conn.log")
if mode == "fail":
    sys.stderr.write("fatal error in <no location>: Val::CONST_ACCESSOR (types/count)\\n")
    sys.exit(1)
if mode == "hang":
    time.sleep(60)
print("stand-in zeek: done")
"""


def _install_stand_in(bindir: Path) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    prog = bindir / "zeek"
    prog.write_text(STAND_IN.format(python=sys.executable))
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return prog


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `zeek` first on PATH; returns the file it records its run in."""
    _install_stand_in(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("ZEEK_HOME", raising=False)
    record = tmp_path / "standin.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    monkeypatch.setenv("STANDIN_LOG", str(GET_CONN))
    return record


def _blocks(data: bytes) -> list[bytes]:
    """Whole pcap records / pcapng blocks, as the capture hands them to sinks."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        out, off = [], 0
        while off < len(data):
            (length,) = struct.unpack_from(order + "I", data, off + 4)
            out.append(data[off : off + length])
            off += length
        return out
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [data[:24]], 24
    while off < len(data):
        (incl,) = struct.unpack_from(order + "I", data, off + 8)
        out.append(data[off : off + 16 + incl])
        off += 16 + incl
    return out


NAMES = DictNameMap(
    {
        "141.142.228.5": PodName("default/wget-1", "default", "pod", "job/wget"),
        "192.150.187.43": "web/svc/bro-org",
        "10.0.0.4": "kube-system/coredns-1",
    }
)


@pytest.mark.parametrize(
    ("trace", "log"), [(GET_PCAP, GET_CONN), (MULTI_PCAPNG, MULTI_CONN)], ids=["pcap", "pcapng"]
)
def test_zeek_sink_with_stand_in_zeek_program_feeds_every_byte_and_names_the_logs(
    stand_in: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trace: Path,
    log: Path,
) -> None:
    monkeypatch.setenv("STANDIN_LOG", str(log))
    out = tmp_path / "zeek-out"
    data = trace.read_bytes()
    sink = ZeekSink(out, NAMES, extra_args=["local", "-e", "redef Site::local_nets += {};"])
    blocks = _blocks(data)
    assert b"".join(blocks) == data and len(blocks) > 2
    for block in blocks:
        sink.write(block)
    summary = sink.close()

    run = json.loads(stand_in.read_text())
    assert run["argv"][1:] == ["-C", "-r", "-", "local", "-e", "redef Site::local_nets += {};"]
    assert Path(run["argv"][0]) == tmp_path / "bin" / "zeek"
    # Zeek works in raw/ and its logs stay there as it wrote them; DIR gets them named.
    assert Path(run["cwd"]) == out / "raw"
    assert (out / "raw" / "conn.log").read_bytes() == log.read_bytes()
    assert run["size"] == len(data) and run["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary.returncode == 0 and summary.bytes_written == len(data)
    assert (out / "zeek.stdout").read_text() == "stand-in zeek: done\n"
    # Owner-only like the captures: Zeek's logs (made under our umask), its output, the folder.
    for path in (out / "conn.log", out / "zeek.stdout", out / "zeek.stderr"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "raw").stat().st_mode) == 0o700

    (conn,) = [f for f in summary.files if f.path.name == "conn.log"]
    assert conn.skipped is None and conn.rows > 0
    records = list(ZeekLog(out / "conn.log"))
    originals = list(ZeekLog(log))
    for old, new in zip(originals, records, strict=True):
        assert {k: new[k] for k in old} == old
    if trace == GET_PCAP:
        assert records[0]["orig_pod"] == "default/wget-1"
        assert records[0]["orig_workload"] == "job/wget"
        assert records[0]["resp_pod"] == "web/svc/bro-org"
    else:
        # 172.17.0.2 is left unknown on purpose
        assert [r["orig_pod"] for r in records] == [None] + ["kube-system/coredns-1"] * 2
        assert conn.named_rows == 2
        assert all(r["resp_pod"] is None for r in records)
    assert sink.close() is summary  # idempotent


def test_zeek_sink_with_stand_in_zeek_program_failing_at_the_end_raises(
    stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "fail")
    sink = ZeekSink(tmp_path / "out", NAMES)
    for block in _blocks(GET_PCAP.read_bytes()):
        sink.write(block)
    with pytest.raises(ZsniffError) as err:
        sink.close()
    assert "exit status 1" in err.value.message
    assert "Val::CONST_ACCESSOR" in err.value.message
    assert "zeek.stderr" in err.value.hint
    assert err.value.status == ExitStatus.OUTPUT_ERROR
    # the partial log still got its names
    assert next(iter(ZeekLog(tmp_path / "out" / "conn.log")))["orig_pod"] == "default/wget-1"


def test_zeek_sink_with_stand_in_zeek_program_rejecting_non_pcap_input(
    stand_in: Path, tmp_path: Path
) -> None:
    sink = ZeekSink(tmp_path / "out", NAMES)
    sink.write(b"this is not a capture")
    with pytest.raises(ZsniffError, match="unknown file format"):
        sink.close()


def test_zeek_sink_with_stand_in_zeek_program_exiting_early_breaks_the_pipe(
    stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "exit-early")
    sink = ZeekSink(tmp_path / "out", NAMES, extra_args=["bad.zeek"])
    header = _blocks(GET_PCAP.read_bytes())[0]
    chunk = header + b"\0" * (1 << 20)
    with pytest.raises(ZsniffError) as err:
        for _ in range(64):  # far more than a pipe buffer: the write must fail
            sink.write(chunk)
    assert "Zeek exited while receiving packets (exit status 1)" in err.value.message
    assert "syntax error" in err.value.message
    assert err.value.status == ExitStatus.OUTPUT_ERROR


def test_zeek_sink_with_stand_in_zeek_program_that_hangs_is_stopped(
    stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_MODE", "hang")
    sink = ZeekSink(tmp_path / "out", NAMES, wait_timeout=0.5)
    for block in _blocks(GET_PCAP.read_bytes()):
        sink.write(block)
    with pytest.raises(ZsniffError, match="did not finish within 0.5s"):
        sink.close()


def test_zeek_sink_that_never_got_data_does_not_run_zeek(stand_in: Path, tmp_path: Path) -> None:
    summary = ZeekSink(tmp_path / "out", NAMES).close()
    assert summary.returncode is None and summary.files == []
    assert not stand_in.exists()


def test_zeek_missing_is_tool_missing_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("ZEEK_HOME", raising=False)
    monkeypatch.setattr(zeek_mod, "ZEEK_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(ZsniffError) as err:
        ZeekSink(tmp_path / "out", NAMES)
    assert err.value.status == ExitStatus.TOOL_MISSING
    assert "docs.zeek.org" in err.value.hint and "ZEEK_HOME" in err.value.hint
    with pytest.raises(ZsniffError):
        find_zeek()


def test_find_zeek_looks_in_zeek_home_and_install_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _install_stand_in(tmp_path / "home" / "bin")
    prefix = _install_stand_in(tmp_path / "opt-zeek-bin")
    env = {"PATH": "", "ZEEK_HOME": str(tmp_path / "home")}
    assert find_zeek(env, extra_dirs=[str(prefix.parent)]) == str(home)
    assert find_zeek({"PATH": ""}, extra_dirs=[str(prefix.parent)]) == str(prefix)
