"""pcapng: block round trips, the fast EPB encoder, the reader, and real tools reading our files."""

from __future__ import annotations

import io
import random
import re
import struct
import subprocess
from pathlib import Path

import pytest

from kubectl_zsniff.formats.pcap import (
    Packet,
    PcapFormatError,
    PcapStreamParser,
    encode_pcap_header,
)
from kubectl_zsniff.formats.pcapng import (
    CaptureEvent,
    CapturePushParser,
    CustomData,
    Interface,
    InterfaceStats,
    NameRecords,
    PacketRecord,
    PcapngPacketEncoder,
    SectionStart,
    custom_block,
    enhanced_packet_block,
    interface_description_block,
    interface_statistics_block,
    name_resolution_block,
    name_resolution_blocks,
    read_capture,
    section_header_block,
)
from tests.unit.capture_fixtures import (
    LINKTYPE_ETHERNET,
    ZEEK_TRACES,
    capture_loopback_udp,
    require_tool,
    tshark,
    udp_frame,
)


def events_of(*blocks: bytes) -> list[CaptureEvent]:
    return list(read_capture(b"".join(blocks), allow_truncated=False))


def assert_block_framing(block: bytes) -> None:
    length = struct.unpack_from("<I", block, 4)[0]
    assert length == len(block)
    assert length % 4 == 0
    assert struct.unpack_from("<I", block, length - 4)[0] == length


SHB = section_header_block()
IDB = interface_description_block(LINKTYPE_ETHERNET, 262144)


# --- block round trips ---------------------------------------------------------------------


def test_section_header_with_every_option() -> None:
    block = section_header_block(
        "capture of ünïcode pods", hardware="x86_64", os="Linux 6.1", userappl="kubectl-zsniff 0.1"
    )
    assert_block_framing(block)
    assert events_of(block) == [
        SectionStart(
            "pcapng",
            "<",
            1,
            0,
            hardware="x86_64",
            os="Linux 6.1",
            userappl="kubectl-zsniff 0.1",
            comment="capture of ünïcode pods",
        )
    ]


def test_block_without_options_has_no_options_field() -> None:
    assert len(SHB) == 28
    assert len(IDB) == 20
    assert events_of(SHB) == [SectionStart("pcapng", "<", 1, 0)]


@pytest.mark.parametrize("name", ["a", "ab", "abc", "abcd", "default/web-1", "ns/pöd-é"])
def test_interface_description_with_every_option_and_odd_lengths(name: str) -> None:
    block = interface_description_block(
        LINKTYPE_ETHERNET,
        65535,
        name=name,
        description=name + " (desc)",
        tsresol_nanos=True,
        os="Linux",
        filter="udp port 53",
        comment="c" * len(name),
    )
    assert_block_framing(block)
    assert events_of(SHB, block)[1] == Interface(
        0,
        LINKTYPE_ETHERNET,
        65535,
        name=name,
        description=name + " (desc)",
        tsresol=1_000_000_000,
        os="Linux",
        filter="udp port 53",
        comment="c" * len(name),
    )


def test_interface_defaults_to_microseconds() -> None:
    interface = events_of(SHB, IDB)[1]
    assert isinstance(interface, Interface)
    assert interface.tsresol == 1_000_000 and interface.name is None


@pytest.mark.parametrize("length", range(0, 9))
@pytest.mark.parametrize("comment", [None, "x", "kommentär"])
def test_enhanced_packet_round_trip_every_padding(length: int, comment: str | None) -> None:
    data = bytes(range(length))
    block = enhanced_packet_block(0, 1_700_000_000_123_456, length, length + 40, data, comment)
    assert_block_framing(block)
    assert events_of(SHB, IDB, block)[2] == PacketRecord(
        0, 1_700_000_000_123_456_000, length, length + 40, data, comment
    )


def test_enhanced_packet_rejects_wrong_caplen() -> None:
    with pytest.raises(ValueError, match="caplen"):
        enhanced_packet_block(0, 0, 3, 3, b"ab")


def test_name_resolution_ipv4_ipv6_several_unicode_names() -> None:
    entries = [
        ("10.244.0.5", ("default/web-1", "web-1.default.pod")),
        ("127.0.0.1", ("default/web-1",)),
        ("fd00:10:244::5", ("shop/db-0", "bäckerei/brötchen-0")),
        ("::1", ("a",)),
    ]
    block = name_resolution_block(entries, comment="from the API server")
    assert_block_framing(block)
    assert events_of(SHB, block)[1] == NameRecords(
        tuple((ip, tuple(names)) for ip, names in entries), comment="from the API server"
    )


def test_name_resolution_splits_long_lists_into_blocks_and_records() -> None:
    entries = [(f"10.{i // 256}.{i % 256}.1", (f"namespace-{i}/pod-{i}",)) for i in range(3000)]
    blocks = name_resolution_blocks(entries, max_block_bytes=4096)
    assert len(blocks) > 10
    assert all(len(block) <= 4096 for block in blocks)
    events = events_of(SHB, *blocks)
    records = [
        record for event in events if isinstance(event, NameRecords) for record in event.records
    ]
    assert records == [(ip, tuple(names)) for ip, names in entries]
    many_names = [f"n{i:06d}" for i in range(10_000)]  # 80 kB: over one record's 64 KiB
    (event,) = events_of(
        SHB, name_resolution_block([("::1", many_names)], max_block_bytes=1 << 20)
    )[1:]
    assert isinstance(event, NameRecords) and len(event.records) == 2
    assert [name for _, names in event.records for name in names] == many_names


def test_name_resolution_rejects_bad_entries() -> None:
    for entry in [("10.0.0.1", ["a\0b"]), ("10.0.0.1", [""]), ("10.0.0.1", []), ("nope", ["x"])]:
        with pytest.raises(ValueError):
            name_resolution_block([entry])
    (event,) = events_of(SHB, name_resolution_block([]))[1:]
    assert event == NameRecords(())


def test_interface_statistics_round_trip() -> None:
    idb = interface_description_block(LINKTYPE_ETHERNET, 0, tsresol_nanos=True)
    block = interface_statistics_block(
        0,
        1_700_000_001_000_000_000,
        received=1000,
        dropped=7,
        os_dropped=2,
        filter_accepted=990,
        delivered=983,
        start_units=1_700_000_000_000_000_000,
        end_units=1_700_000_001_000_000_000,
        comment="tcpdump: 7 packets dropped by kernel",
    )
    assert_block_framing(block)
    assert events_of(SHB, idb, block)[2] == InterfaceStats(
        0,
        1_700_000_001_000_000_000,
        received=1000,
        dropped=7,
        os_dropped=2,
        filter_accepted=990,
        delivered=983,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_000_000_000,
        comment="tcpdump: 7 packets dropped by kernel",
    )
    (only_drops,) = events_of(SHB, IDB, interface_statistics_block(0, 5, dropped=3))[2:]
    assert only_drops == InterfaceStats(0, 5000, dropped=3)


def test_custom_block_round_trip_and_unknown_blocks_skipped() -> None:
    unknown = struct.pack("<II", 0x0000_0F0F, 16) + b"abcd" + struct.pack("<I", 16)
    events = events_of(
        SHB, custom_block(32473, b"pods"), unknown, custom_block(1, b"", copyable=False)
    )
    assert events[1:] == [CustomData(32473, b"pods", True), CustomData(1, b"", False)]


# --- fast encoder --------------------------------------------------------------------------


def test_packet_encoder_matches_block_encoder() -> None:
    rng = random.Random(11)
    packets = [
        Packet(1_700_000_000 + i, rng.randrange(10**9), n, n + i, rng.randbytes(n))
        for i, n in enumerate([0, 1, 2, 3, 4, 5, 63, 64, 65, 1500, 1499, 9001])
    ]
    encoder = PcapngPacketEncoder(3, packet_nanosecond=True)
    expected = b"".join(
        enhanced_packet_block(3, p.ts_sec * 10**9 + p.ts_frac, p.caplen, p.origlen, p.data)
        for p in packets
    )
    assert encoder.encode_batch(packets) == expected
    assert encoder.encode_batch(packets) == expected  # cached trailers stay right
    assert b"".join(encoder.encode(p) for p in packets) == expected
    parts: list[bytes] = []
    assert encoder.extend_parts(packets, parts) == len(expected)
    assert b"".join(parts) == expected


@pytest.mark.parametrize(
    ("packet_ns", "interface_ns", "units"),
    [
        (False, False, 5_000_123),
        (False, True, 5_000_123_000),
        (True, False, 5_000_000),
        (True, True, 5_000_000_123),
    ],
)
def test_packet_encoder_converts_resolution(
    packet_ns: bool, interface_ns: bool, units: int
) -> None:
    encoder = PcapngPacketEncoder(0, packet_nanosecond=packet_ns, interface_nanosecond=interface_ns)
    packet = Packet(5, 123, 1, 1, b"x")
    assert encoder.ts_units(packet) == units
    assert encoder.encode(packet) == enhanced_packet_block(0, units, 1, 1, b"x")


# --- reader --------------------------------------------------------------------------------


def big_endian_block(block_type: int, body: bytes) -> bytes:
    return struct.pack(">II", block_type, len(body) + 12) + body + struct.pack(">I", len(body) + 12)


def big_endian_section() -> bytes:
    shb = big_endian_block(
        0x0A0D0D0A,
        struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
        + struct.pack(">HH", 1, 2)
        + b"BE\0\0"
        + struct.pack(">HH", 0, 0),
    )
    idb = big_endian_block(
        1,
        struct.pack(">HHI", 1, 0, 96)
        + struct.pack(">HH", 2, 3)
        + b"eth\0"
        + struct.pack(">HH", 9, 1)
        + b"\x83\0\0\0"  # 2^-3 s ticks
        + struct.pack(">HH", 0, 0),
    )
    epb = big_endian_block(6, struct.pack(">IIIII", 0, 0, 16, 3, 3) + b"abc\0")
    spb = big_endian_block(3, struct.pack(">I", 200) + b"z" * 96)
    obsolete = big_endian_block(2, struct.pack(">HHIIII", 0, 0, 0, 8, 2, 2) + b"pb\0\0")
    nrb = big_endian_block(
        4, struct.pack(">HH", 1, 6) + bytes([10, 0, 0, 1]) + b"a\0\0\0" + struct.pack(">HH", 0, 0)
    )
    return shb + idb + epb + spb + obsolete + nrb


def test_reads_big_endian_sections_spb_and_obsolete_packet_block() -> None:
    events = list(read_capture(big_endian_section(), allow_truncated=False))
    assert events == [
        SectionStart("pcapng", ">", 1, 0, comment="BE"),
        Interface(0, 1, 96, name="eth", tsresol=8),
        PacketRecord(0, 2_000_000_000, 3, 3, b"abc"),
        PacketRecord(0, 0, 96, 200, b"z" * 96),
        PacketRecord(0, 1_000_000_000, 2, 2, b"pb"),
        NameRecords((("10.0.0.1", ("a",)),)),
    ]


def test_several_sections_restart_interfaces_and_byte_order() -> None:
    little = (
        SHB
        + interface_description_block(1, 0, name="first")
        + enhanced_packet_block(0, 1, 1, 1, b"a")
    )
    events = list(read_capture(little + big_endian_section() + little))
    interfaces = [e for e in events if isinstance(e, Interface)]
    assert [(i.id, i.name) for i in interfaces] == [(0, "first"), (0, "eth"), (0, "first")]
    assert [e.byte_order for e in events if isinstance(e, SectionStart)] == ["<", ">", "<"]
    assert sum(isinstance(e, PacketRecord) for e in events) == 5


def sample_file(seed: int = 3) -> bytes:
    rng = random.Random(seed)
    blocks = [
        section_header_block("sample"),
        interface_description_block(1, 0, name="a"),
        interface_description_block(1, 0, name="b", tsresol_nanos=True),
    ]
    for index in range(200):
        if index % 50 == 25:
            blocks.append(name_resolution_block([(f"10.0.0.{index}", [f"pod-{index}"])]))
        data = rng.randbytes(rng.choice([1, 2, 3, 60, 1500]))
        blocks.append(
            enhanced_packet_block(
                index % 2, index, len(data), len(data), data, "c" if index % 17 == 0 else None
            )
        )
    return b"".join(blocks)


@pytest.mark.parametrize("seed", [1, 2])
def test_push_parser_random_chunkings_equal_one_shot(seed: int) -> None:
    data = sample_file(seed)
    expected = list(read_capture(data))
    rng = random.Random(seed)
    parser = CapturePushParser()
    got: list[CaptureEvent] = []
    offset = 0
    while offset < len(data):
        size = rng.choice([1, 3, 4, 11, 12, 13, rng.randrange(1, 30_000)])
        piece = data[offset : offset + size]
        got += parser.feed(memoryview(piece) if size % 2 else bytearray(piece))
        offset += size
    assert got == expected
    assert parser.pending_bytes == 0 and parser.packets == 200 and parser.bytes == len(data)


def test_push_parser_one_byte_at_a_time_for_pcap_and_pcapng() -> None:
    pcap = encode_pcap_header(1, nanosecond=True) + b"".join(
        struct.pack("<IIII", i, i, 2, 2) + b"ab" for i in range(20)
    )
    for data in (sample_file()[:20_000], pcap):
        parser = CapturePushParser()
        got = [
            event for index in range(len(data)) for event in parser.feed(data[index : index + 1])
        ]
        assert got == list(read_capture(data))


def test_truncated_block_is_pending_not_emitted() -> None:
    data = sample_file()
    last = enhanced_packet_block(0, 9, 5, 5, b"tail!")
    parser = CapturePushParser()
    events = parser.feed(data + last[:-1])
    assert events == list(read_capture(data))
    assert parser.pending_bytes == len(last) - 1
    assert parser.feed(last[-1:]) == [PacketRecord(0, 9000, 5, 5, b"tail!")]
    assert list(read_capture(data + last[:30])) == events
    with pytest.raises(PcapFormatError, match="ends inside"):
        list(read_capture(data + last[:30], allow_truncated=False))


def test_reader_accepts_pcap_bytes_streams_and_paths(tmp_path: Path) -> None:
    pcap = encode_pcap_header(101, 1000) + struct.pack("<IIII", 7, 8, 1, 9) + b"x"
    expected = [
        SectionStart("pcap", "<", 2, 4),
        Interface(0, 101, 1000),
        PacketRecord(0, 7_000_008_000, 1, 9, b"x"),
    ]
    assert list(read_capture(pcap)) == expected
    assert list(read_capture(io.BytesIO(pcap), chunk_size=3)) == expected
    (tmp_path / "f.pcap").write_bytes(pcap)
    assert list(read_capture(tmp_path / "f.pcap")) == expected
    assert list(read_capture(str(tmp_path / "f.pcap"))) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Error: container not found\n", "neither pcap nor pcapng"),
        (IDB, "neither pcap nor pcapng"),
        (SHB[:8] + b"\0\0\0\0" + SHB[12:], "byte-order magic"),
        (SHB[:-4] + b"\0\0\0\0", "trailer"),
        (SHB + struct.pack("<II", 6, 10) + bytes(10), "bad length"),
    ],
)
def test_reader_rejects_junk(data: bytes, message: str) -> None:
    with pytest.raises(PcapFormatError, match=message):
        list(read_capture(data))


# --- real tools ----------------------------------------------------------------------------

POD_NAMES = {"127.0.0.1": "default/web-1", "10.244.0.5": "default/web-1", "::1": "shop/db-0"}


def build_pod_capture(tmp_path: Path) -> tuple[Path, list[PacketRecord]]:
    """A pcapng built the way the plugin builds one: real tcpdump bytes, two pods, a mid NRB.

    Interface 0 (default/web-1) carries the real loopback capture; interface 1 (shop/db-0)
    carries crafted IPv4/IPv6 frames. Frames 1-2 precede the NRB; everything after follows it.
    """
    real = capture_loopback_udp(tmp_path / "lo.pcap", 4, nanosecond=True)
    parser = PcapStreamParser()
    loopback = parser.feed(real.read_bytes())
    assert parser.header is not None and parser.header.nanosecond and len(loopback) == 4
    base = loopback[0].ts_sec
    crafted = [
        Packet(base - 2, 1, 0, 0, udp_frame("10.244.0.5", "10.244.0.9", b"before-nrb")),
        Packet(base - 1, 2, 0, 0, udp_frame("::1", "::1", b"before-nrb-v6")),
        Packet(base + 100, 3, 0, 0, udp_frame("10.244.0.5", "10.244.0.9", b"after-nrb")),
        Packet(base + 101, 999_999_999, 0, 0, udp_frame("::1", "::1", b"after-nrb-v6-odd")),
    ]
    crafted = [p._replace(caplen=len(p.data), origlen=len(p.data)) for p in crafted]
    web = PcapngPacketEncoder(0, packet_nanosecond=True)
    db = PcapngPacketEncoder(1, packet_nanosecond=True)
    blocks = [
        section_header_block("kubectl-zsniff test capture", userappl="kubectl-zsniff"),
        interface_description_block(
            LINKTYPE_ETHERNET,
            262144,
            "default/web-1",
            "pod default/web-1 on node kind-worker",
            tsresol_nanos=True,
        ),
        interface_description_block(
            LINKTYPE_ETHERNET,
            262144,
            "shop/db-0",
            "pod shop/db-0 on node kind-worker2",
            tsresol_nanos=True,
        ),
        db.encode_batch(crafted[:2]),
        name_resolution_block([(ip, [name]) for ip, name in POD_NAMES.items()]),
        web.encode_batch(loopback),
        db.encode_batch(crafted[2:]),
        interface_statistics_block(0, web.ts_units(loopback[-1]), received=4, dropped=0),
    ]
    path = tmp_path / "pods.pcapng"
    path.write_bytes(b"".join(blocks))
    order = (
        [(1, p) for p in crafted[:2]] + [(0, p) for p in loopback] + [(1, p) for p in crafted[2:]]
    )
    records = [PacketRecord(i, p.ts_ns(True), p.caplen, p.origlen, p.data) for i, p in order]
    return path, records


def test_capinfos_lists_both_named_interfaces(tmp_path: Path) -> None:
    require_tool("capinfos")
    path, records = build_pod_capture(tmp_path)
    result = subprocess.run(["capinfos", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Number of packets:   {len(records)}" in out
    assert "Number of interfaces in file: 2" in out
    assert re.search(
        r"Interface #0 info:\s+Name = default/web-1\s+Description = pod default/web-1", out
    )
    assert re.search(r"Interface #1 info:\s+Name = shop/db-0", out)
    assert "Capture comment:     kubectl-zsniff test capture" in out
    assert "Number of resolved IPv4 addresses in file: 2" in out


def test_tshark_shows_pod_names_only_after_the_nrb(tmp_path: Path) -> None:
    path, records = build_pod_capture(tmp_path)
    result = tshark(
        "-r",
        str(path),
        "-N",
        "n",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "frame.interface_name",
        "-e",
        "ip.src_host",
        "-e",
        "ipv6.src_host",
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines()]
    assert rows == [
        ["shop/db-0", "10.244.0.5", ""],
        ["shop/db-0", "", "::1"],
        *[["default/web-1", "default/web-1", ""]] * 4,
        ["shop/db-0", "default/web-1", ""],
        ["shop/db-0", "", "shop/db-0"],
    ]
    without_resolution = tshark("-r", str(path), "-n", "-T", "fields", "-e", "ip.src_host")
    assert "default/web-1" not in without_resolution.stdout


def test_tshark_sees_exactly_our_bytes_and_timestamps(tmp_path: Path) -> None:
    path, records = build_pod_capture(tmp_path)
    listing = tshark(
        "-r",
        str(path),
        "-T",
        "fields",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
        "-e",
        "frame.time_epoch",
    )
    assert listing.returncode == 0, listing.stderr
    assert [line.split("\t") for line in listing.stdout.splitlines()] == [
        [str(r.origlen), str(r.caplen), f"{r.ts_ns // 10**9}.{r.ts_ns % 10**9:09d}"]
        for r in records
    ]
    back = tmp_path / "back.pcap"
    rewrite = tshark("-r", str(path), "-F", "nsecpcap", "-w", str(back))
    assert rewrite.returncode == 0, rewrite.stderr
    parser = PcapStreamParser()
    rewritten = parser.feed(back.read_bytes())
    assert [(p.ts_ns(True), p.data) for p in rewritten] == [(r.ts_ns, r.data) for r in records]


def test_file_cut_inside_a_packet_keeps_every_whole_packet(tmp_path: Path) -> None:
    require_tool("capinfos")
    path, records = build_pod_capture(tmp_path)
    data = path.read_bytes()
    events = list(read_capture(data))
    packet_ends = []
    offset = 0
    while offset < len(data):
        block_type, length = struct.unpack_from("<II", data, offset)
        offset += length
        if block_type == 6:
            packet_ends.append(offset)
    cut_after = 5  # cut inside the sixth packet
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: packet_ends[cut_after] - 7])
    assert [e for e in read_capture(cut) if isinstance(e, PacketRecord)] == records[:cut_after]
    capinfos = subprocess.run(["capinfos", "-c", str(cut)], capture_output=True, text=True)
    assert "cut short" in capinfos.stderr
    assert f"Number of packets:   {cut_after}" in capinfos.stdout
    listing = tshark("-r", str(cut), "-N", "n", "-T", "fields", "-e", "frame.interface_name")
    assert "cut short" in listing.stderr
    assert len(listing.stdout.splitlines()) == cut_after
    assert len([e for e in events if isinstance(e, PacketRecord)]) == len(records)


def capinfos_count(path: Path) -> int:
    result = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True)
    match = re.search(r"Number of packets:\s+(\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return int(match.group(1))


@pytest.mark.parametrize(
    "name", ["wikipedia.pcap", "pcapng-multi-interface.pcapng", "ftp/ipv6.pcap", "dns53.pcap"]
)
def test_packet_counts_of_real_traces_match_capinfos(name: str) -> None:
    require_tool("capinfos")
    path = ZEEK_TRACES / name
    if not path.exists():
        pytest.skip(f"{path} is not present (shared Zeek traces not mounted)")
    events = list(read_capture(path, allow_truncated=False))
    packets = [e for e in events if isinstance(e, PacketRecord)]
    assert len(packets) == capinfos_count(path)
    interfaces = [e for e in events if isinstance(e, Interface)]
    assert interfaces and all(p.interface_id < len(interfaces) for p in packets)
    assert all(p.caplen == len(p.data) for p in packets)


@pytest.mark.parametrize(("packet_ns", "interface_ns"), [(False, False), (True, True),
                                                        (False, True), (True, False)])
def test_feed_pcap_equals_parse_then_encode_on_random_chunkings(
    packet_ns: bool, interface_ns: bool
) -> None:
    from kubectl_zsniff.formats.pcap import encode_pcap_record

    rng = random.Random(7)
    for order in ("<", ">"):
        stream = encode_pcap_header(1, nanosecond=packet_ns, byte_order=order) + b"".join(
            encode_pcap_record(1_700_000_000 + i, rng.randrange(10**6),
                               rng.randbytes(rng.randrange(0, 300)), byte_order=order)
            for i in range(400)
        )
        for limit in (None, 123):
            cuts = sorted(rng.sample(range(1, len(stream)), 60))
            fused_parser, slow_parser = PcapStreamParser(), PcapStreamParser()
            fused = PcapngPacketEncoder(0, packet_nanosecond=packet_ns,
                                        interface_nanosecond=interface_ns)
            slow = PcapngPacketEncoder(0, packet_nanosecond=packet_ns,
                                       interface_nanosecond=interface_ns)
            parts: list[bytes | memoryview] = []
            raw = bytearray()
            packets: list[Packet] = []
            left = limit
            for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                fed = fused.feed_pcap(fused_parser, memoryview(stream)[start:end], parts,
                                      max_packets=left)
                raw += fed.raw
                if left is not None:
                    left -= fed.packets
                packets += slow_parser.feed(stream[start:end])
                if fed.stop == "packets":
                    break
            if limit is not None:
                packets = packets[:limit]
            assert b"".join(parts) == slow.encode_batch(packets)
            assert bytes(raw) == stream[24 : 24 + len(raw)]
            assert fused_parser.packets == len(packets)


# --- the block layout table and the framer ----------------------------------------------------


def test_every_layout_round_trips_through_the_table() -> None:
    from kubectl_zsniff.formats.detect import BLOCK_SHB
    from kubectl_zsniff.formats.pcapng import BLOCK_ISB, encode_block

    stream = b"".join(
        (
            encode_block(BLOCK_SHB, (0x1A2B3C4D, 1, 0, -1), comment="first", os="second"),
            interface_description_block(1, 96, tsresol_nanos=True, filter="udp"),
            encode_block(BLOCK_ISB, (0, 0, 5), received=7, start=3),
        )
    )
    events = list(read_capture(stream))
    assert events[0] == SectionStart("pcapng", "<", 1, 0, os="second", comment="first")
    assert events[1] == Interface(0, 1, 96, tsresol=1_000_000_000, filter="udp")
    assert events[2] == InterfaceStats(0, 5, received=7, start_ns=3)


def test_table_encoder_refuses_what_the_layout_does_not_have() -> None:
    from kubectl_zsniff.formats.pcapng import BLOCK_EPB, encode_block

    with pytest.raises(TypeError, match="no option"):
        encode_block(BLOCK_EPB, (0, 0, 0, 0, 0), colour="red")
    with pytest.raises(TypeError, match="cannot hold"):
        encode_block(BLOCK_EPB, (0, 0, 0, 0, 0), comment=5)
    with pytest.raises(ValueError, match="power of ten"):
        encode_block(1, (1, 0, 0), tsresol=1024)


def test_framer_refuses_bad_framing_with_the_stream_offset() -> None:
    from kubectl_zsniff.formats.pcapng import BlockFramer

    good = section_header_block()
    bad_trailer = good + interface_description_block(1)[:-4] + struct.pack("<I", 99)
    with pytest.raises(PcapFormatError, match=f"block at byte {len(good)}: trailer length 99"):
        BlockFramer().feed(bad_trailer, lambda block_type, block: None)
    with pytest.raises(PcapFormatError, match="does not start with a Section Header"):
        BlockFramer().feed(interface_description_block(1), lambda block_type, block: None)
    seen: list[int] = []
    BlockFramer("<").feed(interface_description_block(1), lambda t, block: seen.append(t))
    assert seen == [1]  # given an order, blocks before any SHB are read in it
