"""Helpers for format tests: hand-made frames, real tcpdump captures, tool availability."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.shared_data import ZEEK_TRACES as ZEEK_TRACES

LINKTYPE_ETHERNET = 1


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (CI installs it; these tests need the real tool)")
    return path


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: str, dst: str, payload: bytes, sport: int = 40000, dport: int = 53) -> bytes:
    """An Ethernet frame carrying UDP over IPv4 or IPv6, valid enough for tshark to dissect."""
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if source.version == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            1,
            0,
            64,
            17,
            0,
            source.packed,
            destination.packed,
        )
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethertype = 0x0800
    else:
        header = struct.pack(
            "!IHBB16s16s", 0x6000_0000, len(udp), 17, 64, source.packed, destination.packed
        )
        ethertype = 0x86DD
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    return ethernet + struct.pack("!H", ethertype) + header + udp


def capture_loopback_udp(path: Path, count: int, *, nanosecond: bool = False) -> Path:
    """Write a real tcpdump capture of ``count`` UDP datagrams sent to 127.0.0.1."""
    require_tool("tcpdump")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["tcpdump", "-i", "lo", "-U", "-n", "-c", str(count), "-w", str(path)]
    if nanosecond:
        command += ["--time-stamp-precision", "nano"]
    command += ["udp", "and", "dst", "port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Datagrams go out until tcpdump has its `count` and exits: a slow start under load only
    # takes longer (a minute at most), it never yields a short capture or a skip.
    timed_out = False
    try:
        deadline = time.monotonic() + 60
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sent = 0
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                sent += 1
                sender.sendto(b"zsniff-%d-" % sent + b"x" * (sent % 7), ("127.0.0.1", port))
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    reason = stderr.decode(errors="replace")[-300:]
    assert not timed_out, f"tcpdump saw fewer than {count} of {sent} datagrams in 60 s: {reason}"
    if proc.returncode != 0 or not path.exists():
        # tcpdump itself refused (no permission to capture): the machine, not the load.
        pytest.skip(f"tcpdump cannot capture on lo here: {reason}")
    return path


def tshark(*args: str) -> subprocess.CompletedProcess[str]:
    require_tool("tshark")
    return subprocess.run(
        ["tshark", "-o", "nameres.use_external_name_resolver:FALSE", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
