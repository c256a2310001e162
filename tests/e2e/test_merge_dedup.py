"""Two pods that talk, both captured: one file in time order, and with --dedup each packet once.

Two captures run at once over the same traffic: a plain one (both ends kept: it is the per-pod
captures, one interface each) and one with --dedup. The copies --dedup must drop are counted
independently from the plain file: a frame on the client's interface whose exact bytes were
seen on the web pod's interface within the window (pods on one bridge forward frames
unchanged).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    PodPair,
    Zsniff,
    assert_no_capture_left,
    load,
    read_line,
)

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

WINDOW_S = 0.25  # the default --reorder-window
DEDUP_WINDOW_NS = 200_000_000
EXCHANGES = {"icmp": 20, "udp": 20, "http": 4}


def start(zsniff: Zsniff, pair: PodPair, out: Path, *flags: str) -> subprocess.Popen[str]:
    proc = zsniff.start([pair.web, f"pod/{pair.client}", *flags, "-w", str(out), "ip", "and",
                         "host", pair.web_ips[0], "and", "host", pair.client_ips[0]],
                        stderr=subprocess.PIPE, text=True)
    return proc


def wait_both_listening(proc: subprocess.Popen[str], seen: list[str]) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + 90
    listening = 0
    while listening < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
        line = read_line(proc.stderr, 5)
        seen.append(line)
        listening += "listening on" in line


def finish(proc: subprocess.Popen[str], seen: list[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    return err


def frame_times(path: Path) -> list[float]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True).stdout
    return [float(t) for t in out.split()]


def seen_twice(path: Path) -> int:
    """Frames on the second pod's interface whose exact bytes the first pod's interface had
    within the window, each matched once: the copies of packets captured at both ends."""
    cap = load(path)
    by_interface: dict[int, list[Any]] = {}
    for packet in cap.packets:
        by_interface.setdefault(packet.interface_id, []).append(packet)
    assert len(by_interface) == 2
    first, second = by_interface.values()
    unmatched = Counter(p.data for p in first)
    times: dict[bytes, list[int]] = {}
    for p in first:
        times.setdefault(p.data, []).append(p.ts_ns)
    copies = 0
    for p in second:
        stamps = times.get(p.data) or []
        near = [t for t in stamps if abs(t - p.ts_ns) <= DEDUP_WINDOW_NS]
        if near and unmatched[p.data] > 0:
            unmatched[p.data] -= 1
            stamps.remove(near[0])
            copies += 1
    return copies


def kinds(path: Path) -> Counter[str]:
    """How many ICMP echo requests / replies and UDP datagrams the file holds."""
    rows = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "icmp.type", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    counted: Counter[str] = Counter()
    for row in rows:
        icmp_type, udp_port = (row.split("\t") + [""])[:2]
        if icmp_type == "8":
            counted["echo request"] += 1
        elif icmp_type == "0":
            counted["echo reply"] += 1
        elif udp_port == "9000":
            counted["udp to the server"] += 1
        elif udp_port:
            counted["udp reply"] += 1
    return counted


def test_two_pods_that_talk_merge_in_time_order_and_dedup_keeps_one_copy(
    cluster: Any, pair: PodPair, zsniff: Zsniff, tmp_path: Path,
) -> None:
    plain_out, dedup_out = tmp_path / "both-ends.pcapng", tmp_path / "dedup.pcapng"
    plain_seen: list[str] = []
    dedup_seen: list[str] = []
    plain = start(zsniff, pair, plain_out)
    dedup = start(zsniff, pair, dedup_out, "--dedup")
    try:
        wait_both_listening(plain, plain_seen)
        wait_both_listening(dedup, dedup_seen)
        pair.run_traffic(families=(4,), **EXCHANGES)
        time.sleep(1.0)
    finally:
        finish(plain, plain_seen)
        dedup_err = finish(dedup, dedup_seen)

    # One file in time order: tshark's frame times never go back by more than the window.
    times = frame_times(plain_out)
    assert len(times) > 4 * sum(EXCHANGES.values())
    backsteps = [a - b for a, b in zip(times, times[1:], strict=False) if b < a]
    assert all(step <= WINDOW_S for step in backsteps), backsteps

    # Both ends kept without --dedup: every request and reply twice (leaving, entering).
    both = kinds(plain_out)
    assert both["echo request"] == both["echo reply"] == 2 * EXCHANGES["icmp"], both
    assert both["udp to the server"] == both["udp reply"] == 2 * EXCHANGES["udp"], both

    # --dedup: each once, and the copies dropped are exactly the packets seen twice.
    once = kinds(dedup_out)
    assert once["echo request"] == once["echo reply"] == EXCHANGES["icmp"], once
    assert once["udp to the server"] == once["udp reply"] == EXCHANGES["udp"], once
    copies = seen_twice(plain_out)
    assert copies > 0
    dedup_times = frame_times(dedup_out)
    assert len(dedup_times) == len(times) - copies
    assert f"--dedup: {copies:,} copies of packets seen at both ends dropped" in dedup_err, \
        dedup_err
    # The kept copy is the sender's: requests on the client's interface, replies on web's.
    rows = subprocess.run(["tshark", "-r", str(dedup_out), "-Y", "icmp", "-T", "fields",
                           "-e", "frame.interface_name", "-e", "icmp.type"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    for row in rows:
        interface, icmp_type = row.split("\t")
        sender = pair.client if icmp_type == "8" else pair.web
        assert interface == f"{pair.namespace}/{sender}", row
    for pod in (pair.web, pair.client):
        assert_no_capture_left(cluster, pair.namespace, pod)
