"""--compress on both clusters: the pod gzips tcpdump's stream, zsniff decompresses it; the
file must hold exactly the packets of a reference tcpdump, with names, and nothing of the
capture (tcpdump, gzip, dd, the wrapper) may be left running in the pod after a stop."""

from __future__ import annotations

import glob
import re
import signal
import time
from pathlib import Path
from typing import Any

from kubectl_zsniff.formats.pcapng import PacketRecord, read_capture
from tests.e2e.conftest import (
    PodPair,
    Zsniff,
    assert_no_capture_left,
    capinfos_ok,
    load,
    stop_process,
    tshark_fields,
    wait_capture_live,
    wait_until,
)
from tests.e2e.test_capture import (
    ECHO_TCP_UDP,
    _assert_same_frames,
    _captured_alongside_reference,
)

COMPRESS_PROGRAMS = ("gzip", "dd", "cat")


def _compressor_processes(cluster: Any, namespace: str, pod: str) -> list[Any]:
    return [p for p in cluster.processes(namespace, pod)
            if p.container is not None and p.argv
            and (p.argv[0].rsplit("/", 1)[-1] in COMPRESS_PROGRAMS
                 or any("zsniff-no-compressor" in a for a in p.argv))]


def _chunk_folders(cluster: Any, namespace: str, pod: str) -> list[str]:
    """The compress wrapper's chunk folders (/tmp/.zsniff-gz.PID) in the capture container's
    file system, seen through a process of it that outlives the capture (its lifetime loop)."""
    found: list[str] = []
    for p in cluster.processes(namespace, pod):
        if p.container is not None and p.container.startswith("zsniff-"):
            found += glob.glob(f"/proc/{p.pid}/root/tmp/.zsniff-gz.*")
    return found


def _assert_nothing_left(pair: PodPair) -> None:
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web)
    wait_until(lambda: not _compressor_processes(pair.cluster, pair.namespace, pair.web), 15,
               "gzip, dd, cat and the compress wrapper to be gone from the pod")
    # The chunks of the stream waited in the container's /tmp: the folder goes with the capture.
    wait_until(lambda: not _chunk_folders(pair.cluster, pair.namespace, pair.web), 15,
               "the compress wrapper's chunk folder to be removed")


def test_compressed_capture_has_the_packets_tcpdump_saw_and_the_names(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    out = tmp_path / "web.pcapng"
    result, ref = _captured_alongside_reference(pair, zsniff, tmp_path, out, ["--compress"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "stopped: duration reached" in result.stderr
    assert "tcpdump stopped in the pod (verified)" in result.stderr
    # The summary says what went over the link and for how much pcap.
    said = re.search(r"--compress: ([\d.]+) MB over the API server link for ([\d.]+) MB of "
                     r"pcap \(([\d.]+)x\)", result.stderr)
    assert said, result.stderr
    assert "pcapng" in capinfos_ok(out)
    web, client = f"{pair.namespace}/{pair.web}", f"{pair.namespace}/{pair.client}"
    rows = tshark_fields(out, "ip.src_host", "ip.dst_host", extra=["-Y", ECHO_TCP_UDP])
    assert {(client, web), (web, client)} <= {(r[0], r[1]) for r in rows if r[0]}
    capture = load(out)
    assert [i.name for i in capture.interfaces] == [web]
    _assert_same_frames(pair, out, ref)
    _assert_nothing_left(pair)


def test_compressed_pcap_is_tcpdumps_stream_byte_for_byte(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """Classic pcap is tcpdump's stream untouched: after gzip and back, header and records
    are what the reference tcpdump wrote for the same packets."""
    out = tmp_path / "web.pcap"
    result, ref = _captured_alongside_reference(pair, zsniff, tmp_path, out, ["--compress"])
    assert result.returncode == 0, result.stderr
    raw = out.read_bytes()
    assert raw[:24] == ref.read_bytes()[:24]
    _assert_same_frames(pair, out, ref)
    assert len(raw) == 24 + sum(16 + p.caplen for p in load(out).packets)
    _assert_nothing_left(pair)


def test_count_limit_with_compress_gives_exactly_that_many(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    out = tmp_path / "five.pcapng"
    traffic = pair.traffic(udp=1, icmp=1, seconds=60, pause=0.05)
    try:
        result = zsniff.run([pair.web, "-n", pair.namespace, "-w", str(out), "--count", "5",
                             "--compress"], timeout=90)
    finally:
        stop_process(traffic)
    assert result.returncode == 0, result.stderr
    assert len(load(out).packets) == 5
    _assert_nothing_left(pair)


def test_ctrl_c_with_compress_ends_on_a_whole_packet_and_leaves_nothing(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    out = tmp_path / "stopped.pcapng"
    traffic = pair.traffic(udp=1, icmp=1, seconds=60, pause=0.05)
    try:
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out), "--compress"])
        try:
            wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
            # A quiet-ish stream: the packets reach the file while capturing (one gzip member
            # per read), not only when gzip ends.
            wait_until(lambda: out.exists() and sum(
                isinstance(e, PacketRecord) for e in read_capture(out)) >= 10, 20,
                       "packets in the file while the compressed capture runs")
            # The compressing wrapper runs in the pod (its script names the missing-tool mark).
            assert _compressor_processes(pair.cluster, pair.namespace, pair.web)
            # ... and its chunk folder is where the check after the stop looks for it.
            assert _chunk_folders(pair.cluster, pair.namespace, pair.web)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
    finally:
        stop_process(traffic)
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped: interrupted (Ctrl-C)" in stderr, stderr
    assert "tcpdump stopped in the pod (verified)" in stderr
    capinfos_ok(out)
    packets = load(out).packets
    assert f"{len(packets):,} packets" in stderr
    _assert_nothing_left(pair)
