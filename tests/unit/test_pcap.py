"""Classic pcap: header parsing, push parser under any chunking, encoders read by tcpdump."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from kubectl_zsniff.formats.pcap import (
    PCAP_HEADER_LENGTH,
    ByteOrder,
    Packet,
    PcapFormatError,
    PcapHeader,
    PcapStreamParser,
    encode_pcap_header,
    encode_pcap_record,
    parse_pcap_header,
)
from tests.unit.capture_fixtures import capture_loopback_udp, require_tool, udp_frame

FORMATS: list[tuple[ByteOrder, bool]] = [("<", False), ("<", True), (">", False), (">", True)]


def sample_packets(count: int = 300, seed: int = 7) -> list[Packet]:
    rng = random.Random(seed)
    packets = []
    for index in range(count):
        data = rng.randbytes(rng.choice([0, 1, 3, 14, 60, 61, 63, 64, 1500, 9000]))
        packets.append(
            Packet(
                1_700_000_000 + index,
                rng.randrange(1_000_000),
                len(data),
                len(data) + rng.choice([0, 0, 100]),
                data,
            )
        )
    return packets


def encode_stream(packets: list[Packet], order: ByteOrder = "<", nanosecond: bool = False) -> bytes:
    header = encode_pcap_header(1, 65535, nanosecond=nanosecond, byte_order=order)
    return header + b"".join(
        encode_pcap_record(p.ts_sec, p.ts_frac, p.data, p.origlen, byte_order=order)
        for p in packets
    )


@pytest.mark.parametrize(("order", "nanosecond"), FORMATS)
def test_header_round_trip_for_all_four_magics(order: ByteOrder, nanosecond: bool) -> None:
    encoded = encode_pcap_header(228, 1234, nanosecond=nanosecond, byte_order=order)
    assert len(encoded) == PCAP_HEADER_LENGTH
    assert parse_pcap_header(encoded) == PcapHeader(order, nanosecond, 2, 4, 1234, 228)


def test_header_masks_fcs_bits_of_linktype() -> None:
    header = bytearray(encode_pcap_header(1))
    header[20:24] = (0x1000_0000 | 1).to_bytes(4, "little")
    assert parse_pcap_header(bytes(header)).linktype == 1


@pytest.mark.parametrize(
    ("junk", "message"),
    [
        (b"tcpdump: lo: No such device exists\n", "magic"),
        (bytes.fromhex("0a0d0d0a") + bytes(20), "pcapng"),
        (b"\xd4\xc3\xb2\xa1", "24 bytes"),
        (encode_pcap_header(1)[:4] + b"\x01\x00" + bytes(18), "version"),
    ],
)
def test_junk_header_raises_clear_error(junk: bytes, message: str) -> None:
    with pytest.raises(PcapFormatError, match=message) as raised:
        parse_pcap_header(junk)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(("order", "nanosecond"), FORMATS)
def test_round_trip_both_byte_orders_and_resolutions(order: ByteOrder, nanosecond: bool) -> None:
    packets = sample_packets()
    parser = PcapStreamParser()
    assert parser.feed(encode_stream(packets, order, nanosecond)) == packets
    assert parser.header is not None
    assert parser.header.nanosecond is nanosecond
    assert parser.header.byte_order == order
    assert parser.pending_bytes == 0
    assert parser.packets == len(packets)
    assert parser.data_bytes == sum(p.caplen for p in packets)


def test_ns_timestamp_helper() -> None:
    packet = Packet(10, 5, 0, 0, b"")
    assert packet.ts_ns(nanosecond=True) == 10_000_000_005
    assert packet.ts_ns(nanosecond=False) == 10_000_005_000
    header = parse_pcap_header(encode_pcap_header(1, nanosecond=True))
    assert header.timestamp_ns(packet) == 10_000_000_005


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_chunkings_equal_one_shot(seed: int) -> None:
    stream = encode_stream(sample_packets(seed=seed), ">", True)
    expected = PcapStreamParser().feed(stream)
    rng = random.Random(seed)
    parser = PcapStreamParser()
    got: list[Packet] = []
    offset = 0
    while offset < len(stream):
        size = rng.choice([1, 2, 15, 16, 17, 23, 24, 25, rng.randrange(1, 20_000)])
        piece = stream[offset : offset + size]
        kind = rng.randrange(3)
        got += parser.feed(
            piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(piece)
        )
        offset += size
    assert got == expected
    assert parser.bytes == len(stream)
    assert parser.pending_bytes == 0


def test_one_byte_at_a_time() -> None:
    stream = encode_stream(sample_packets(40))
    parser = PcapStreamParser()
    got: list[Packet] = []
    for index in range(len(stream)):
        got += parser.feed(stream[index : index + 1])
    assert got == sample_packets(40)


def test_truncated_tail_is_kept_pending_not_emitted() -> None:
    packets = sample_packets(10)
    stream = encode_stream(packets)
    last_record = 16 + packets[-1].caplen
    parser = PcapStreamParser()
    assert parser.feed(stream[:-5]) == packets[:-1]
    assert parser.pending_bytes == last_record - 5
    assert parser.feed(stream[-5:]) == packets[-1:]
    assert parser.pending_bytes == 0


def test_junk_is_rejected_from_the_first_four_bytes() -> None:
    parser = PcapStreamParser()
    assert parser.feed(b"tcp") == []
    with pytest.raises(PcapFormatError, match="magic"):
        parser.feed(b"d")


def test_header_only_then_records() -> None:
    parser = PcapStreamParser()
    assert parser.feed(encode_pcap_header(1)[:10]) == []
    assert parser.header is None
    assert parser.feed(encode_pcap_header(1)[10:]) == []
    assert parser.header is not None and parser.header.linktype == 1
    assert parser.feed(encode_pcap_record(1, 2, b"abc")) == [Packet(1, 2, 3, 3, b"abc")]


def test_feed_raw_splits_whole_records_only() -> None:
    packets = sample_packets(50)
    stream = encode_stream(packets)
    rng = random.Random(5)
    parser = PcapStreamParser()
    raw = bytearray()
    count = 0
    offset = 0
    while offset < len(stream):
        size = rng.randrange(1, 5000)
        whole, records = parser.feed_raw(stream[offset : offset + size])
        raw += whole
        count += records
        offset += size
    assert bytes(raw) == stream[PCAP_HEADER_LENGTH:]
    assert count == len(packets) == parser.packets


def test_out_of_sync_caplen_is_an_error() -> None:
    stream = encode_pcap_header(1, 65535) + encode_pcap_record(1, 2, b"x" * 300_000)
    with pytest.raises(PcapFormatError, match="out of sync"):
        PcapStreamParser().feed(stream)
    with pytest.raises(PcapFormatError, match="out of sync"):
        PcapStreamParser(max_caplen=100).feed_raw(
            encode_pcap_header(1) + encode_pcap_record(1, 2, b"x" * 101)
        )


@pytest.mark.parametrize(("order", "nanosecond"), FORMATS)
def test_tcpdump_reads_what_we_write(tmp_path: Path, order: ByteOrder, nanosecond: bool) -> None:
    require_tool("tcpdump")
    frames = [udp_frame("10.244.0.5", "10.244.0.9", b"q" * n) for n in (1, 2, 3, 500)]
    packets = [Packet(1_700_000_000 + i, 123 + i, len(f), len(f), f) for i, f in enumerate(frames)]
    path = tmp_path / "crafted.pcap"
    path.write_bytes(encode_stream(packets, order, nanosecond))
    precision = ["--time-stamp-precision", "nano"] if nanosecond else []
    result = subprocess.run(
        ["tcpdump", "-r", str(path), "-nn", "-tt", *precision],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(frames)
    assert "10.244.0.5.40000 > 10.244.0.9.53" in lines[0]
    fraction = "000000123" if nanosecond else "000123"
    assert lines[0].startswith(f"1700000000.{fraction} ")


@pytest.mark.parametrize("nanosecond", [False, True])
def test_parses_real_tcpdump_capture(tmp_path: Path, nanosecond: bool) -> None:
    path = capture_loopback_udp(tmp_path / "real.pcap", 5, nanosecond=nanosecond)
    data = path.read_bytes()
    parser = PcapStreamParser()
    packets: list[Packet] = []
    for offset in range(0, len(data), 7):
        packets += parser.feed(data[offset : offset + 7])
    assert parser.header is not None and parser.header.nanosecond is nanosecond
    assert len(packets) == 5
    assert all(b"zsniff-" in p.data for p in packets)
    listing = subprocess.run(
        ["tcpdump", "-r", str(path), "-nn", "-tt"]
        + (["--time-stamp-precision", "nano"] if nanosecond else []),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    width = 9 if nanosecond else 6
    assert [line.split()[0] for line in listing] == [
        f"{p.ts_sec}.{p.ts_frac:0{width}d}" for p in packets
    ]
