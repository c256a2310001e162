"""Offline commands on real traces: convert with names, hosts files, names read back, enrich.

The traces are Zeek's own test traces (../shared/data/zeek) and a capture made with plain tcpdump.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.pcapng import Interface, PacketRecord, read_capture
from kubectl_zsniff.offline import convert_capture, hosts_file_text, names_from_capture
from tests.shared_data import ZEEK_DATA, ZEEK_TRACES
from tests.unit.capture_fixtures import capture_loopback_udp

SHARED = ZEEK_DATA
TRACES = ZEEK_TRACES
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
needs_traces = pytest.mark.skipif(not TRACES.exists(), reason="shared Zeek traces not found")


def tshark_fields(path: Path, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-N", "n", *extra, "-T", "fields"]
    for field in fields:
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def zsniff(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from kubectl_zsniff.cli.app import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


@needs_tshark
@needs_traces
@pytest.mark.parametrize(
    ("trace", "names"),
    [
        ("wikipedia.pcap", {"141.142.220.118": "web/client-0", "208.80.152.118": "web/svc/wiki"}),
        ("ftp/ipv6.pcap", {"2001:470:1f11:81f:c999:d94:aa7c:2e3e": "ftp/client",
                           "2001:470:4867:99::21": "ftp/server-0"}),
        ("pcapng-multi-interface.pcapng", {"10.0.0.4": "net/client", "1.1.1.1": "net/dns"}),
    ],
)
def test_convert_puts_names_on_every_packet_and_keeps_them(
    tmp_path: Path, trace: str, names: dict[str, str]
) -> None:
    source = TRACES / trace
    out = tmp_path / "named.pcapng"
    summary = convert_capture(source, out, names, "test")
    original = tshark_fields(source, "frame.len", "frame.time_epoch")
    converted = tshark_fields(out, "frame.len", "frame.time_epoch")
    assert summary.packets == len(original)
    assert converted == original  # same packets, same times, in the same order
    assert out.stat().st_mode & 0o777 == 0o600
    src_field = "ipv6.src_host" if ":" in next(iter(names)) else "ip.src_host"
    seen = {row[0] for row in tshark_fields(out, src_field) if row and row[0]}
    assert set(names.values()) & seen, seen
    # Interfaces of a multi-interface pcapng stay separate, with names.
    source_ifaces = [e for e in read_capture(str(source)) if isinstance(e, Interface)]
    out_ifaces = [e for e in read_capture(str(out)) if isinstance(e, Interface)]
    assert len(out_ifaces) == len(source_ifaces)
    assert all(i.name for i in out_ifaces)


@needs_tshark
def test_convert_a_plain_tcpdump_capture(tmp_path: Path) -> None:
    """A classic pcap straight from tcpdump -w: every datagram converted, both ends named."""
    raw = capture_loopback_udp(tmp_path / "plain.pcap", 5)
    out = tmp_path / "named.pcapng"
    summary = convert_capture(raw, out, {"127.0.0.1": "default/local"}, "test")
    rows = tshark_fields(out, "ip.src_host", "ip.dst_host")
    assert summary.packets == 5
    assert rows == [["default/local", "default/local"]] * 5, rows


@needs_tshark
@needs_traces
def test_hosts_file_works_with_tshark(tmp_path: Path) -> None:
    hosts = tmp_path / "k8s.hosts"
    hosts.write_text(hosts_file_text({"141.142.220.118": "web/client-0"}))
    rows = tshark_fields(TRACES / "wikipedia.pcap", "ip.src_host",
                         extra=("-H", str(hosts)))
    assert ["web/client-0"] in rows


def test_convert_refuses_junk_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    with pytest.raises(ZsniffError) as err:
        convert_capture(junk, tmp_path / "out.pcapng", {}, "t")
    assert err.value.status == ExitStatus.USAGE
    with pytest.raises(ZsniffError) as err:
        convert_capture(tmp_path / "nope.pcap", tmp_path / "out.pcapng", {}, "t")
    assert err.value.status == ExitStatus.USAGE


@needs_traces
def test_names_read_back_follow_time(tmp_path: Path) -> None:
    from kubectl_zsniff.capture.run import OutputPipeline
    from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
    from kubectl_zsniff.kube.pod import PodInfo
    from kubectl_zsniff.names.book import NameBook
    from kubectl_zsniff.names.map import PodName
    from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
    from tests.unit.test_pipeline import CollectingSink, udp_frame

    book = NameBook(clock=lambda: 0.0)
    book.set_object(("pods", "a", "old"), [("10.1.0.9", PodName("a/old", "a"))])
    book.drain_changes()
    sink = CollectingSink("pcapng")
    pod = PodInfo("a", "web", "n", ("c",), "Running", ("10.1.0.1",))
    pipe = OutputPipeline([sink], pod, "z", "ctx", TcpdumpOptions(), CaptureLimits(), book)
    pipe.feed(encode_pcap_header(1))
    pipe.feed(encode_pcap_record(1000, 0, udp_frame("10.1.0.9", "10.1.0.1")))
    book.set_object(("pods", "a", "old"), [])
    pipe.feed(encode_pcap_record(1500, 0, udp_frame("10.1.0.9", "10.1.0.1")))
    book.set_object(("pods", "a", "heir"), [("10.1.0.9", PodName("a/heir", "a"))])
    pipe.feed(encode_pcap_record(2000, 0, udp_frame("10.1.0.9", "10.1.0.1")))
    path = tmp_path / "c.pcapng"
    path.write_bytes(sink.data)
    names = names_from_capture(path)
    old, new = names.lookup("10.1.0.9", 1000.5), names.lookup("10.1.0.9", 2000.5)
    assert old is not None and old.name == "a/old"
    assert names.lookup("10.1.0.9", 1500.5) is None  # released: no owner known then
    assert new is not None and new.name == "a/heir"
    web = names.lookup("10.1.0.1")
    assert web is not None and web.namespace == "a"
    packets = [e for e in read_capture(str(path)) if isinstance(e, PacketRecord)]
    assert len(packets) == 3


@needs_traces
def test_enrich_command_names_zeek_logs_from_a_hosts_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(SHARED / "decanon" / "opt.basic_conn.log", logs / "conn.log")
    shutil.copy(
        SHARED / "decanon"
        / "scripts.base.frameworks.logging.json-non-printable-escaping_http.log.json",
        logs / "http.log",
    )
    hosts = tmp_path / "names.hosts"
    hosts.write_text("141.142.220.118 web/client-0\n141.142.228.5 web/svc/proxy\n")
    result = zsniff("enrich", str(logs), "--names-from", str(hosts))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    conn = (logs / "conn.log").read_text().splitlines()
    fields = next(line for line in conn if line.startswith("#fields")).split("\t")[1:]
    assert {"orig_pod", "resp_pod"} <= set(fields)
    rows = [dict(zip(fields, line.split("\t"), strict=True))
            for line in conn if not line.startswith("#")]
    named = [r for r in rows if r["id.orig_h"] == "141.142.220.118"]
    assert named and all(r["orig_pod"] == "web/client-0" for r in named)
    for line in (logs / "http.log").read_text().splitlines():
        json.loads(line)  # still one JSON object per line


def test_enrich_command_rejects_a_missing_path(tmp_path: Path) -> None:
    result = zsniff("enrich", str(tmp_path / "nope"), "--names-from", "/dev/null")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --- the CLI's offline commands, as a user runs them (this checkout, a fresh interpreter) ---

CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'kubectl-zsniff'; "
       "from kubectl_zsniff.cli.app import main; main()"]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(PYTHONPATH=str(ROOT), HOME=str(cwd))
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


def _two_packet_pcap(path: Path, cut: int = 0) -> Path:
    from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
    from tests.unit.capture_fixtures import udp_frame

    data = encode_pcap_header(1) + b"".join(
        encode_pcap_record(1000 + i, 0, udp_frame("10.1.0.9", "10.1.0.1", b"x" * 40))
        for i in range(2))
    path.write_bytes(data[:len(data) - cut] if cut else data)
    return path


def test_convert_and_view_of_a_truncated_capture_warn(tmp_path: Path) -> None:
    """Like tshark ("cut short in the middle of a packet"): the whole packets are used, and
    the user is told the file ended mid-packet. A whole file gets no warning."""
    hosts = tmp_path / "k8s.hosts"
    hosts.write_text("10.1.0.9 shop/web\n")
    cut = _two_packet_pcap(tmp_path / "cut.pcap", cut=10)
    whole = _two_packet_pcap(tmp_path / "whole.pcap")
    converted = run_cli("convert", str(cut), str(tmp_path / "cut.pcapng"), "--names-from",
                        str(hosts), cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert "warning: " in converted.stderr and "cut short in the middle of a packet" in \
        converted.stderr, converted.stderr
    assert "1 packet, 1 interface, 1 cluster name" in converted.stderr  # and in the singular
    fine = run_cli("convert", str(whole), str(tmp_path / "whole.pcapng"), "--names-from",
                   str(hosts), cwd=tmp_path)
    assert fine.returncode == 0 and "warning" not in fine.stderr, fine.stderr
    assert "2 packets, 1 interface" in fine.stderr
    if shutil.which("tshark") is not None:
        # tshark itself fails on the cut tail, and pyshark raised while rows were still
        # printed (exit 2 or 0 by timing): every run must show the whole packet and warn.
        for _ in range(3):
            viewed = run_cli("view", str(cut), cwd=tmp_path)
            assert viewed.returncode == 0, viewed.stderr
            assert "cut short in the middle of a packet" in viewed.stderr, viewed.stderr
            assert "1 packet shown" in viewed.stderr
            assert "10.1.0.9" in viewed.stdout
        assert "cut short" not in run_cli("view", str(whole), cwd=tmp_path).stderr


def test_convert_refuses_to_overwrite_an_existing_file_without_force(tmp_path: Path) -> None:
    hosts = tmp_path / "k8s.hosts"
    hosts.write_text("10.1.0.9 shop/web\n")
    source = _two_packet_pcap(tmp_path / "in.pcap")
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"keep me")
    refused = run_cli("convert", str(source), str(out), "--names-from", str(hosts),
                      cwd=tmp_path)
    assert refused.returncode == 16, refused.stderr
    assert "error: " in refused.stderr and "already exists" in refused.stderr
    assert "hint: " in refused.stderr and "--force" in refused.stderr
    assert out.read_bytes() == b"keep me"
    forced = run_cli("convert", str(source), str(out), "--names-from", str(hosts), "--force",
                     cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
