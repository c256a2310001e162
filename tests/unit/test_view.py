"""Terminal view: names from NRBs rendered by real tshark; the sink never blocks the capture."""

from __future__ import annotations

import io
import ipaddress
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from kubectl_zsniff.formats import pcapng
from kubectl_zsniff.sinks.view import (
    PACKET_BLOCK_TYPES,
    SKIP_MARKER_TYPE,
    BlockSplitter,
    ViewSink,
    parse_skip_marker,
    skip_marker,
    view_command,
)
from tests.shared_data import ZEEK_TRACES

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
WIKIPEDIA = ZEEK_TRACES / "wikipedia.pcap"

WEB, DB, OTHER = "10.244.0.5", "10.244.0.6", "10.244.0.9"


# --- pcapng test streams, written with the project's encoders --------------------------------


def shb() -> bytes:
    return pcapng.section_header_block()


def idb(name: str = "default/web-1") -> bytes:
    return pcapng.interface_description_block(1, 0, name=name)  # Ethernet, microseconds


def nrb(entries: dict[str, str]) -> bytes:
    return pcapng.name_resolution_block([(ip, [name]) for ip, name in entries.items()])


def epb(frame: bytes, ts_us: int) -> bytes:
    return pcapng.enhanced_packet_block(0, ts_us, len(frame), len(frame), frame)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_frame(src: str, dst: str, proto: str, sport: int, dport: int, payload: bytes) -> bytes:
    if proto == "udp":
        transport = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        number = 17
    else:  # a TCP segment with PSH+ACK
        transport = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0)
        transport += payload
        number = 6
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(transport),
        1,
        0x4000,
        64,
        number,
        0,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    ethernet = bytes.fromhex("0a5800f400050a5800f40006") + b"\x08\x00"
    return ethernet + header + transport


def demo_stream(packets: int = 4) -> list[bytes]:
    """SHB, IDB, NRB naming two pods, then alternating UDP and TCP packets between them."""
    blocks = [shb(), idb(), nrb({WEB: "default/web-1", DB: "shop/db-0"})]
    start = 1_700_000_000_000_000
    for i in range(packets):
        if i % 2:
            frame = ipv4_frame(WEB, DB, "tcp", 40000, 5432, b"x" * 10)
        else:
            frame = ipv4_frame(DB, WEB, "udp", 9999, 53000 + i % 1000, b"hello")
        blocks.append(epb(frame, start + i * 1000))
    return blocks


def record(width: int = 160) -> Console:
    return Console(
        record=True, width=width, file=io.StringIO(), force_terminal=False, color_system=None
    )


# --- block splitting -------------------------------------------------------------------------


def test_splitter_any_chunking_and_both_byte_orders() -> None:
    stream = b"".join(demo_stream(3))
    splitter = BlockSplitter()
    blocks = [b for i in range(0, len(stream), 7) for b in splitter.feed(stream[i : i + 7])]
    assert [b.block_type for b in blocks] == [0x0A0D0D0A, 1, 4, 6, 6, 6]
    assert b"".join(b.data for b in blocks) == stream

    big_shb = struct.pack(">IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    big_marker = skip_marker(7, little_endian=False)
    splitter = BlockSplitter()
    got = splitter.feed(big_shb + big_marker)
    assert not splitter.little_endian
    assert [b.block_type for b in got] == [0x0A0D0D0A, SKIP_MARKER_TYPE]
    assert parse_skip_marker(got[1], little_endian=False) == 7


# --- offline view ----------------------------------------------------------------------------


@needs_tshark
def test_view_file_shows_pod_names_from_nrb(tmp_path: Path) -> None:
    from kubectl_zsniff.view.render import view_file

    path = tmp_path / "names.pcapng"
    path.write_bytes(b"".join(demo_stream(4)))
    console = record()
    shown = view_file(str(path), console)
    text = console.export_text()
    assert shown == 4, text
    lines = text.splitlines()
    assert len(lines) == 4
    assert "shop/db-0:9999" in lines[0] and "default/web-1:53000" in lines[0]
    assert " UDP " in lines[0]
    assert "default/web-1:40000" in lines[1] and "shop/db-0:5432" in lines[1]
    assert " TCP " in lines[1]
    assert "40000 → 5432 [PSH, ACK] Seq=1 Ack=1" in lines[3]  # tshark's own Info column


@needs_tshark
def test_view_file_filter_count_and_unnamed_addresses(tmp_path: Path) -> None:
    from kubectl_zsniff.view.render import view_file

    blocks = demo_stream(6)
    blocks.append(epb(ipv4_frame(OTHER, WEB, "udp", 1, 2, b"z"), 1_700_000_001_000_000))
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(b"".join(blocks))
    console = record()
    assert view_file(str(path), console, display_filter="tcp", count=2) == 2
    assert all(" TCP " in line for line in console.export_text().splitlines())

    console = record()
    view_file(str(path), console, display_filter=f"ip.src == {OTHER}", time_format="date")
    line = console.export_text().strip()
    assert f"{OTHER}:1" in line and "default/web-1:2" in line  # no name: the address
    assert "2023-11-14" in line


@needs_tshark
def test_view_file_bad_filter_is_a_usage_error(tmp_path: Path) -> None:
    from kubectl_zsniff.errors import ExitStatus, ZsniffError
    from kubectl_zsniff.view.render import view_file

    path = tmp_path / "x.pcapng"
    path.write_bytes(b"".join(demo_stream(2)))
    with pytest.raises(ZsniffError) as caught:
        view_file(str(path), record(), display_filter="tcp.port ==")
    assert caught.value.status == ExitStatus.USAGE


@needs_tshark
@pytest.mark.skipif(not WIKIPEDIA.is_file(), reason="shared Zeek traces are not present")
def test_view_file_wikipedia_pcap_with_ipv6() -> None:
    from kubectl_zsniff.view.render import view_file

    console = record(width=200)
    assert view_file(str(WIKIPEDIA), console) == 136
    lines = console.export_text().splitlines()
    assert len(lines) == 136
    ipv6 = [line for line in lines if "fe80::" in line]
    assert ipv6, "IPv6 rows expected"
    assert any("MDNS" in line for line in ipv6)


# --- the live child through the sink -----------------------------------------------------------


@needs_tshark
def test_sink_feeds_the_real_view_child(tmp_path: Path) -> None:
    out_path = tmp_path / "view.txt"
    with out_path.open("wb") as out:
        sink = ViewSink(view_command(width=200, color="never"), stdout=out, close_timeout=30)
        blocks = demo_stream(6)
        sink.write(b"".join(blocks[:3]))  # header blocks together, then packet by packet
        for block in blocks[3:]:
            sink.write(block)
        summary = sink.close()
    text = out_path.read_text()
    assert summary.exit_code == 0, text
    assert (summary.total_packets, summary.sent_packets, summary.dropped_packets) == (6, 6, 0)
    assert summary.message() is None
    lines = text.splitlines()
    assert len(lines) == 6, text
    assert all("default/web-1" in line and "shop/db-0" in line for line in lines)


def test_dead_view_never_raises_into_the_capture() -> None:
    sink = ViewSink(["true"])
    time.sleep(0.3)  # let it exit
    blocks = demo_stream(50)
    for block in blocks:
        sink.write(block)
    summary = sink.close()
    assert summary.view_gone
    assert summary.total_packets == 50
    assert summary.sent_packets + summary.dropped_packets == 50
    assert summary.dropped_packets > 0
    assert "ended early" in (summary.message() or "")


SLOW_READER = (
    "import sys, time, shutil\n"
    "time.sleep(float(sys.argv[2]))\n"
    "with open(sys.argv[1], 'wb') as out:\n"
    "    shutil.copyfileobj(sys.stdin.buffer, out)\n"
)


def _count_packets(path: Path) -> int:
    result = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        check=True,
    )
    return len(result.stdout.splitlines())


@needs_tshark
def test_slow_view_never_blocks_and_the_file_beside_it_keeps_every_packet(
    tmp_path: Path,
) -> None:
    total = 20_000
    received = tmp_path / "received.pcapng"
    saved = tmp_path / "saved.pcapng"
    blocks = demo_stream(total)
    # The view reads nothing for 3 s: a view far slower than the capture.
    sink = ViewSink([sys.executable, "-c", SLOW_READER, str(received), "3"], close_timeout=30)
    started = time.monotonic()
    with saved.open("wb") as capture_file:
        for i in range(0, len(blocks), 3):  # several whole blocks per write, as a capture does
            chunk = b"".join(blocks[i : i + 3])
            capture_file.write(chunk)
            sink.write(chunk)
    elapsed = time.monotonic() - started
    summary = sink.close()

    assert elapsed < 2.5, f"write loop took {elapsed:.2f} s: the view slowed the capture"
    assert summary.total_packets == total
    assert summary.dropped_packets > 0
    assert summary.sent_packets + summary.dropped_packets == total
    assert summary.message() == f"view skipped {summary.dropped_packets:,} of {total:,} packets"
    assert _count_packets(saved) == total  # the file beside the slow view lost nothing

    # The view got only whole blocks: headers and names all, packets as counted, skip markers.
    got = BlockSplitter().feed(received.read_bytes())
    types = [b.block_type for b in got]
    assert types[:3] == [0x0A0D0D0A, 1, 4]
    assert sum(t in PACKET_BLOCK_TYPES for t in types) == summary.sent_packets
    markers = [parse_skip_marker(b) or 0 for b in got if b.block_type == SKIP_MARKER_TYPE]
    assert markers and markers == sorted(markers)
    assert markers[-1] == summary.dropped_packets  # the last marker, sent at close, has them all
    assert b"".join(b.data for b in got) == received.read_bytes()
    clean = tmp_path / "clean.pcapng"
    clean.write_bytes(b"".join(b.data for b in got if b.block_type != SKIP_MARKER_TYPE))
    assert _count_packets(clean) == summary.sent_packets


@needs_tshark
def test_real_view_says_how_many_it_skipped(tmp_path: Path) -> None:
    total = 20_000
    out_path = tmp_path / "view.txt"
    blocks = demo_stream(total)
    with out_path.open("wb") as out:
        sink = ViewSink(view_command(width=200, color="never"), stdout=out, close_timeout=60)
        for i in range(0, len(blocks), 10):
            sink.write(b"".join(blocks[i : i + 10]))
        summary = sink.close()
    assert summary.exit_code == 0
    assert summary.dropped_packets > 0, "the real view kept up with a tight loop?"
    text = out_path.read_text()
    rows = [line for line in text.splitlines() if "default/web-1" in line]
    skipped = [int(n) for n in re.findall(r"view skipped (\d+) packet", text)]
    assert len(rows) == summary.sent_packets
    assert sum(skipped) == summary.dropped_packets


@needs_tshark
def test_live_view_shows_a_packet_before_the_next_one_arrives(tmp_path: Path) -> None:
    # pyshark's JSON mode shows each packet only when the next arrives; our PSML path must not.
    out_path = tmp_path / "view.txt"
    blocks = demo_stream(2)
    with out_path.open("wb") as out:
        sink = ViewSink(view_command(width=200, color="never"), stdout=out, close_timeout=30)
        sink.write(b"".join(blocks[:4]))  # headers and one packet, then silence
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and out_path.read_text().count("\n") < 1:
            time.sleep(0.05)
        assert out_path.read_text().count("\n") == 1, "the lone packet was not shown"
        sink.write(blocks[4])
        summary = sink.close()
    assert summary.sent_packets == 2
    assert out_path.read_text().count("\n") == 2


@needs_tshark
def test_render_packets_accepts_pyshark_json_packets(tmp_path: Path) -> None:
    import pyshark

    from kubectl_zsniff.view.render import render_packets, tshark_parameters

    path = tmp_path / "json.pcapng"
    path.write_bytes(b"".join(demo_stream(4)))
    capture = pyshark.FileCapture(
        str(path), use_json=True, keep_packets=False, custom_parameters=tshark_parameters()
    )
    console = record()
    try:
        assert render_packets(capture, console) == 4
    finally:
        capture.close()
    lines = console.export_text().splitlines()
    assert "shop/db-0:9999" in lines[0] and "default/web-1:53000" in lines[0]
    assert " TCP " in lines[1] and "Seq=1 Len=10" in lines[1]
