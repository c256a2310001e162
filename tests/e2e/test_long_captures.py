"""Long captures (issue 12): rotation into a ring of files, and streams that drop and come back."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    PodPair,
    Zsniff,
    assert_clean_error,
    assert_no_capture_left,
    capinfos_ok,
    stop_process,
    tshark_fields,
    wait_capture_live,
    zsniff_env,
)

UDP_SEQ = re.compile(rb"zsniff-e2e-udp-(\d+) ")


def udp_requests(path: Path, web_ip: str) -> list[int]:
    """Sequence numbers of the counted UDP stream's requests to the web pod, in file order."""
    rows = tshark_fields(path, "ip.dst", "udp.dstport", "udp.payload",
                         extra=["-Y", f"ip.dst == {web_ip} && udp.dstport == 9000"])
    seqs = []
    for _dst, _port, payload in rows:
        match = UDP_SEQ.match(bytes.fromhex(payload.replace(":", "")))
        assert match, payload
        seqs.append(int(match.group(1)) // 1000)  # podnet numbers rounds in thousands
    return seqs


def test_ring_of_three_1mb_files_under_steady_traffic(cluster: Any, zsniff: Zsniff,
                                                      pair: PodPair, tmp_path: Path) -> None:
    """-C 1M -W 3 under a steady counted UDP stream: never more than 3 files, each read alone
    by capinfos and by tshark with the pod names, and the 3 files together hold every request
    of their span: nothing lost or doubled where one file ends and the next begins."""
    base = tmp_path / "ring.pcapng"
    proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(base), "-C", "1M", "-W", "3",
                         "udp port 9000"], stderr=subprocess.PIPE, text=True)
    most = 0
    try:
        wait_capture_live(cluster, pair.namespace, pair.web, proc=proc)
        traffic = pair.traffic(udp=1, size=1400, seconds=12, pause=0.002, families=(4,))
        while traffic.poll() is None:
            most = max(most, len(list(tmp_path.glob("ring-*.pcapng"))))
            time.sleep(0.02)
        time.sleep(1.0)  # the last echoes reach the file
        stop_process(proc, timeout=30)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert "Traceback" not in err, err
    files = sorted(tmp_path.glob("ring-*.pcapng"))
    assert most <= 3 and len(files) == 3, (most, files, err)
    numbers = [int(p.stem.split("-")[1]) for p in files]
    assert numbers[0] > 1 and numbers == list(range(numbers[0], numbers[0] + 3)), numbers
    assert "older removed by --ring" in err, err
    web_ip = pair.web_ips[0]
    match = re.search(r"([\d,]+) dropped by the kernel", err)
    assert match, err
    dropped = int(match.group(1).replace(",", ""))
    joined: list[int] = []
    per_file: list[list[int]] = []
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.stat().st_size <= 1_000_000, path
        capinfos_ok(path)
        hosts = {h for row in tshark_fields(path, "ip.src_host", "ip.dst_host") for h in row}
        assert f"{pair.namespace}/{pair.web}" in hosts, (path, hosts)
        assert f"{pair.namespace}/{pair.client}" in hosts, (path, hosts)
        seqs = udp_requests(path, web_ip)
        assert seqs, path
        joined += seqs
        per_file.append(seqs)
    assert joined == sorted(set(joined)), "a request is doubled or out of order"
    # What tcpdump never read (its kernel drops, counted) is the only thing that may be
    # missing; where one file ends and the next begins, nothing may be.
    missing = (joined[-1] - joined[0] + 1) - len(joined)
    assert missing <= dropped, f"{missing} requests missing, {dropped} dropped by the kernel"
    for before, after in zip(per_file, per_file[1:], strict=False):
        assert after[0] - before[-1] - 1 <= dropped, (before[-1], after[0], dropped)
        if not dropped:
            assert after[0] == before[-1] + 1, (before[-1], after[0])
    assert_no_capture_left(cluster, pair.namespace, pair.web)


def tcpdumps_in(cluster: Any, namespace: str, pod: str) -> list[int]:
    """zsniff's tcpdump processes in the pod (not their wrapper shells)."""
    return [p.pid for p in cluster.processes(namespace, pod)
            if p.container is not None and p.argv and p.argv[0].endswith("tcpdump")]


def gap_comments(path: Path) -> list[str]:
    return [row[0] for row in tshark_fields(path, "frame.comment")
            if row and "capture gap" in row[0]]


@pytest.mark.double_only  # the test double cuts a stream after N bytes on demand
def test_a_stream_dropped_three_times_in_a_row_is_survived_each_time(
        cluster: Any, zsniff: Zsniff, pair: PodPair, tmp_path: Path) -> None:
    """The API server cuts tcpdump's exec stream after 30 kB, three times in a row: each time
    zsniff makes sure the old tcpdump is gone, starts a new one and goes on writing the same
    file, with a gap comment on the first packet after each gap and a summary line for each;
    the capture then ends by its duration (exit 0), one tcpdump having run at a time."""
    out = tmp_path / "drops.pcapng"
    traffic = pair.traffic(udp=1, size=600, seconds=60, pause=0.01, families=(4,))
    try:
        cluster.set_faults(exec_drop_after_bytes=30_000, exec_drop_count=3,
                           exec_drop_match="immediate-mode")
        proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(out), "-d", "14s",
                             "udp port 9000"], stderr=subprocess.PIPE, text=True)
        most = 0
        try:
            while proc.poll() is None:
                most = max(most, len(tcpdumps_in(cluster, pair.namespace, pair.web)))
                time.sleep(0.05)
            _, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
    finally:
        stop_process(traffic)
        cluster.clear_faults()
    assert "Traceback" not in err, err
    assert proc.returncode == 0, err
    assert err.count("reconnecting for up to") == 3, err
    assert err.count("reconnected: capturing again") == 3, err
    assert len(re.findall(r"gap from \S+ UTC to \S+ UTC", err)) == 3, err
    assert "stopped: duration reached" in err, err
    assert most == 1, f"{most} tcpdumps ran at once"
    capinfos_ok(out)
    comments = gap_comments(out)
    assert len(comments) == 3, comments
    assert all("packets in it may be missing" in c for c in comments), comments
    seqs = udp_requests(out, pair.web_ips[0])
    assert seqs == sorted(set(seqs)), "requests out of order or doubled across a reconnect"
    # After the third drop the stream stays: the last stretch is far longer than 30 kB.
    assert len(seqs) > 4 * 30_000 // 700, len(seqs)
    assert_no_capture_left(cluster, pair.namespace, pair.web)


@pytest.mark.double_only
def test_reconnect_off_keeps_exit_14_and_a_valid_file(
        cluster: Any, zsniff: Zsniff, pair: PodPair, tmp_path: Path) -> None:
    """--reconnect-for 0: a dropped stream ends the capture as before issue 12 (exit 14)."""
    out = tmp_path / "off.pcapng"
    traffic = pair.traffic(udp=1, size=600, seconds=60, pause=0.01, families=(4,))
    try:
        cluster.set_faults(exec_drop_after_bytes=30_000, exec_drop_count=1,
                           exec_drop_match="immediate-mode")
        result = zsniff.run([pair.web, "-n", pair.namespace, "-w", str(out),
                             "--reconnect-for", "0", "udp port 9000"], timeout=60)
    finally:
        stop_process(traffic)
        cluster.clear_faults()
    assert result.returncode == 14, result.stderr
    assert "error: lost the connection" in result.stderr
    assert "reconnecting for up to" not in result.stderr, result.stderr
    capinfos_ok(out)
    assert udp_requests(out, pair.web_ips[0])
    assert_no_capture_left(cluster, pair.namespace, pair.web)


def test_kernel_drops_show_while_capturing_with_a_warning(
        cluster: Any, zsniff: Zsniff, pair: PodPair, tmp_path: Path) -> None:
    """tcpdump held (SIGSTOP) while pings flow, with a 256 KiB buffer (4 frames of a veth):
    the kernel drops packets; once tcpdump runs again the live status line (on a terminal)
    shows the drop count and a warning names the cause and what helps, before the capture
    ends, and the summary's count is at least as large."""
    out = tmp_path / "drops.pcapng"
    primary, secondary = pty.openpty()
    env = zsniff_env(zsniff.home, COLUMNS="250", TERM="xterm")
    proc = subprocess.Popen(zsniff.argv([pair.web, "-n", pair.namespace, "-w", str(out),
                                         "-B", "256", "icmp"]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=secondary, env=env)
    os.close(secondary)
    seen = bytearray()

    def read_for(seconds: float, until: bytes | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in seen):
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    seen.extend(os.read(primary, 65536))
                except OSError:
                    return

    traffic = None
    try:
        read_for(60, b"listening on")
        [pid] = tcpdumps_in(cluster, pair.namespace, pair.web)
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        traffic = pair.traffic(icmp=1, seconds=3, pause=0.005, families=(4,))
        traffic.wait(30)
        os.kill(pid, signal.SIGCONT)
        read_for(20, b"warning: the kernel dropped")
        read_for(1.0)  # a status line or two after it
        live = bytes(seen)
        proc.send_signal(signal.SIGINT)
        read_for(30, b"dropped by the kernel;")
        proc.wait(30)
        read_for(1.0)
    finally:
        if traffic is not None:
            stop_process(traffic)
        stop_process(proc)
        os.close(primary)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text, text
    assert proc.returncode == 130, text
    warning = re.search(r"warning: the kernel dropped ([\d,]+) packets: tcpdump did not read "
                        r"them in time, because the stream to here is slower than the traffic",
                        live.decode(errors="replace"))
    assert warning, live
    assert "a narrower filter, a smaller --snaplen or a larger -B (now 256 KiB) helps" in text
    plain = re.sub(rb"\x1b\[[0-9;]*m", b"", live).decode(errors="replace")
    assert re.search(r"capturing [\d,]+ packets?, .*, [\d,]+ dropped by the kernel, \d+ s",
                     plain), plain
    early = int(warning.group(1).replace(",", ""))
    final = re.search(r"([\d,]+) dropped by the kernel;", text)
    assert final and int(final.group(1).replace(",", "")) >= early > 0, text
    capinfos_ok(out)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 256 KiB tmpfs of the test's own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=700", "zsniff-e2e-full",
                    str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("rotate", [False, True], ids=["one-file", "ring"])
def test_a_full_disk_is_one_clear_error_and_every_file_stays_valid(
        cluster: Any, zsniff: Zsniff, pair: PodPair, small_disk: Path, rotate: bool) -> None:
    """The disk fills mid-capture (-w alone, and -C 50k while rotating): exit 16, one `error:`
    line and a hint, the file being written cut back to its last whole packet, every finished
    file intact, and no `wrote ...` said of what could not be written."""
    base = small_disk / "full.pcapng"
    rotation = ["-C", "50k"] if rotate else []
    proc = zsniff.start([pair.web, "-n", pair.namespace, "-w", str(base), *rotation,
                         "udp port 9000"], stderr=subprocess.PIPE, text=True)
    try:
        wait_capture_live(cluster, pair.namespace, pair.web, proc=proc)
        traffic = pair.traffic(udp=1, size=1400, seconds=20, pause=0.002, families=(4,))
        try:
            proc.wait(timeout=60)
        finally:
            stop_process(traffic)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_clean_error(result, 16, "No space left", str(small_disk / "full"))
    assert "free some space" in err, err
    assert "wrote" not in err.replace("writing", ""), err
    files = sorted(small_disk.glob("full*.pcapng"))
    if rotate:
        assert len(files) >= 2 and base not in files, files
        finished = len(files) - 1
        assert f"the {finished} finished files before it are intact" in err, err
    else:
        assert files == [base], files
    for path in files:
        info = capinfos_ok(path)  # a whole pcapng, the one cut short too
        assert "Number of packets" in info
        assert udp_requests(path, pair.web_ips[0]), path
    assert_no_capture_left(cluster, pair.namespace, pair.web)
