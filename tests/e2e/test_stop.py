"""How a capture ends when the user, the reader or the network ends it: the exit status, a
valid file with the packets so far, the summary, and no tcpdump left running in the pod."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    PodPair,
    RefCapture,
    Zsniff,
    assert_no_capture_left,
    capinfos_ok,
    drop_pair,
    load,
    make_pair,
    stop_process,
    wait_capture_live,
    wait_until,
)


@pytest.mark.parametrize("sig,status,reason", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C)"),
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),
], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_capture_keeps_a_valid_file(
        sig: int, status: int, reason: str, pair: PodPair, zsniff: Zsniff,
        tmp_path: Path) -> None:
    out = tmp_path / "stopped.pcapng"
    traffic = pair.traffic(udp=1, icmp=1, seconds=60, pause=0.05)
    try:
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out)])
        try:
            wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
            time.sleep(1.0)  # a second of traffic: some 80 packets
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
    finally:
        stop_process(traffic)
    stderr = err.decode()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert f"stopped: {reason}" in stderr, stderr
    assert "tcpdump stopped in the pod (verified)" in stderr
    capinfos_ok(out)
    packets = load(out).packets
    assert len(packets) >= 10, len(packets)
    assert f"{len(packets):,} packets" in stderr  # the summary counts what the file holds
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web)


def test_closed_reader_ends_the_capture_promptly(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """`kubectl zsniff POD -w - | head -c 100`: zsniff exits 17 soon after head is gone."""
    traffic = pair.traffic(udp=1, icmp=1, seconds=60, pause=0.05)
    try:
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", "-"],
                            stdout=subprocess.PIPE)
        head = subprocess.Popen(["head", "-c", "100"], stdin=proc.stdout,
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()  # head holds the only read end, like a shell pipe
        try:
            got, _ = head.communicate(timeout=60)
            head_done = time.monotonic()
            _, err = proc.communicate(timeout=30)
            elapsed = time.monotonic() - head_done
        finally:
            stop_process(head)
            stop_process(proc)
    finally:
        stop_process(traffic)
    stderr = err.decode()
    assert len(got) == 100 and got[:4] == b"\x0a\x0d\x0d\x0a", got[:8]
    assert proc.returncode == 17, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert "stopped: the reader went away" in stderr, stderr
    assert elapsed < 10, f"zsniff took {elapsed:.1f} s to notice the reader was gone"
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web)


def test_stuck_reader_does_not_hold_the_stop(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """`kubectl zsniff POD -w - | <a reader that stopped reading>`: the pipe fills, zsniff
    waits on it (nothing lost); on Ctrl-C it gives the reader 5 s, then stops anyway: exit 17,
    a note that the end was not delivered, tcpdump stopped."""
    read_end, write_end = os.pipe()  # nobody reads read_end
    traffic = pair.traffic(udp=20, size=1400, seconds=60, pause=0.01)
    try:
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", "-"], stdout=write_end)
        os.close(write_end)
        try:
            wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
            time.sleep(2.0)  # ~10 MB of traffic: the 64 KiB pipe is full long before
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            elapsed = time.monotonic() - interrupted
        finally:
            stop_process(proc)
    finally:
        stop_process(traffic)
        os.close(read_end)
    stderr = err.decode()
    assert proc.returncode == 17, stderr
    assert "Traceback" not in stderr, stderr
    assert "stopped reading: the end of the capture was not delivered" in stderr, stderr
    assert "tcpdump stopped in the pod (verified)" in stderr, stderr
    assert elapsed < 20, f"the stop took {elapsed:.1f} s"
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web)


@pytest.mark.double_only  # the real cluster loses streams in test_real_cluster.py
def test_lost_stream_keeps_every_whole_packet_before_the_cut(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """The API server cuts the exec stream after CUT bytes of tcpdump's pcap output, with
    reconnecting turned off: exit 14, and the file holds exactly the whole packets within those
    bytes, as tcpdump saw them."""
    cut = 20_000
    out = tmp_path / "cut.pcapng"
    ref = RefCapture(pair.cluster, pair.namespace, pair.web, tmp_path / "ref.pcap",
                     ["udp or icmp or icmp6"])
    traffic = pair.traffic(udp=1, icmp=1, size=300, seconds=60, pause=0.02)
    try:
        pair.cluster.set_faults(exec_drop_after_bytes=cut)
        result = zsniff.run([pair.web, "-n", pair.namespace, "-w", str(out),
                             "--reconnect-for", "0", "udp or icmp or icmp6"], timeout=120)
        # The reference sees the packets after the cut too; it is not in immediate mode, so
        # it holds packets up to libpcap's 1 s block timeout and loses them when stopped: a
        # loaded machine (both cores busy) saw it end short of zsniff's file.
        time.sleep(1.5)
    finally:
        stop_process(traffic)
        ref.stop()
    assert result.returncode == 14, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: lost the connection" in result.stderr, result.stderr
    assert "hint: the capture file is valid up to the last whole packet" in result.stderr
    capinfos_ok(out)
    mine = load(out).packets
    theirs = load(ref.path).packets
    assert mine, "packets flowed before the cut"
    datas = [p.data for p in theirs]
    start = datas.index(mine[0].data)
    assert datas[start:start + len(mine)] == [p.data for p in mine]
    # tcpdump's stream: a 24-byte header, then a 16-byte header and the bytes of each packet.
    kept = 24 + sum(16 + p.caplen for p in mine)
    following = theirs[start + len(mine)]
    assert kept <= cut < kept + 16 + following.caplen, (kept, cut, following.caplen)
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web)


def test_ctrl_c_with_a_hung_api_server_says_what_it_waits_for(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """Issue 9, defect 3: with the API server stopped, Ctrl-C gave ~30 s of silence, ignored a
    second Ctrl-C, and ended with notes and no `error:` line. Now zsniff says at once what it
    waits for, a second Ctrl-C stops the waiting, and the last line says what may be left."""
    out = tmp_path / "hung.pcapng"
    proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out)], text=True)
    server = pair.cluster.server_pid
    try:
        wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
        os.kill(server, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        deadline = time.monotonic() + 5
        said = ""
        while "Ctrl-C again" not in said:
            assert time.monotonic() < deadline, f"nothing said within 5 s: {said!r}"
            said += proc.stderr.readline()
        assert "waiting" in said and "tcpdump" in said, said
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=15)
        assert time.monotonic() - second < 5, "the second Ctrl-C did not stop the waiting"
    finally:
        os.kill(server, signal.SIGCONT)
        stop_process(proc, signal.SIGKILL)
    err = said + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "tcpdump may still run" in errors[0], err
    assert pair.web in errors[0]
    assert any(line.startswith("hint: ") and "idle-lifetime" in line
               for line in err.splitlines()), err
    capinfos_ok(out)  # what arrived is a valid file
    # Once the server runs again it drops the exec connection: tcpdump's stdin closes.
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web, timeout=30)


def test_a_tcpdump_that_ignores_the_stop_is_found_and_killed(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """The stop is verified with `kill -0`, and a tcpdump still there is killed: a frozen
    (SIGSTOPped) tcpdump in the pod survives the stdin close and SIGTERM; only the
    verification's SIGKILL ends it. A no-op verification leaves it there, which this catches."""
    out = tmp_path / "frozen.pcapng"
    proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out)], text=True)
    try:
        pids = wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "tcpdump did not stop within the grace period; it was killed" in err
    assert "tcpdump stopped in the pod (verified)" in err
    assert "error:" not in err, err
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web, timeout=5)
    capinfos_ok(out)


@pytest.mark.double_only  # the real cluster's version decides the protocol, not the test
def test_stop_on_a_server_without_v5_ends_tcpdump_by_signal(
        pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """Before Kubernetes 1.29 the exec websocket is v4.channel.k8s.io, which cannot close
    stdin: the stop must SIGTERM tcpdump in the pod (not wait out the grace period and kill
    the stream), and still end on tcpdump's last whole packet."""
    out = tmp_path / "v4.pcapng"
    pair.cluster.set_exec_v5(False)
    traffic = pair.traffic(udp=1, icmp=1, seconds=60, pause=0.05)
    try:
        assert pair.cluster.state()["exec_v5"] is False
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out)])
        try:
            wait_capture_live(pair.cluster, pair.namespace, pair.web, proc=proc)
            time.sleep(1.0)
            asked = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - asked
        finally:
            stop_process(proc)
    finally:
        stop_process(traffic)
        pair.cluster.set_exec_v5(True)
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "grace period" not in stderr, stderr
    assert "tcpdump stopped in the pod (verified)" in stderr, stderr
    assert took < 8, f"the stop took {took:.1f} s"
    capinfos_ok(out)
    packets = load(out).packets
    assert len(packets) >= 10 and f"{len(packets):,} packets" in stderr, stderr
    assert_no_capture_left(pair.cluster, pair.namespace, pair.web, timeout=5)


def _capture_container_states(cluster: Any, namespace: str, pod: str) -> dict[str, str]:
    statuses = cluster.get_pod(pod, namespace).get("status", {})
    return {s["name"]: next(iter(s.get("state") or {"waiting": {}}))
            for s in statuses.get("ephemeralContainerStatuses") or []
            if s["name"].startswith("zsniff")}


@pytest.fixture
def fresh_pair(cluster: Any) -> Iterator[PodPair]:
    """Pods no capture has touched: a running capture container would be reused, with the
    idle lifetime it was started with."""
    fresh = make_pair(cluster, prefix="idle")
    yield fresh
    drop_pair(fresh)


def test_idle_lifetime_keeps_the_container_while_capturing_then_ends_it(
        fresh_pair: PodPair, zsniff: Zsniff, tmp_path: Path) -> None:
    """--idle-lifetime 3s: a capture of 9 s outlives it (tcpdump keeps the container alive
    to the end), and once the capture is over the capture container exits by itself."""
    pair = fresh_pair
    out = tmp_path / "idle.pcapng"
    traffic = pair.traffic(icmp=1, seconds=60, pause=0.1)
    try:
        result = zsniff.run([pair.web, "-n", pair.namespace, "-w", str(out), "-d", "9s",
                             "--idle-lifetime", "3s", "icmp"])
    finally:
        stop_process(traffic)
    assert result.returncode == 0, result.stderr
    assert "tcpdump stopped in the pod (verified)" in result.stderr, result.stderr
    packets = load(out).packets
    times = sorted(p.ts_ns / 1e9 for p in packets)
    assert times and times[-1] - times[0] > 7, "the capture did not last its 9 s"
    states = _capture_container_states(pair.cluster, pair.namespace, pair.web)
    assert len(states) == 1, f"not one capture container in the pod: {states}"
    # Exits within the lifetime plus the script's 2 s poll (and some slack for the node).
    wait_until(lambda: all(s == "terminated" for s in _capture_container_states(
        pair.cluster, pair.namespace, pair.web).values()), 20,
        "the capture container to exit after --idle-lifetime 3s", interval=0.5)
