"""The output pipeline: tcpdump's pcap stream in, pcapng with live names out, read by tshark."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kubectl_zsniff.capture.run import OutputPipeline, StopReason, TcpdumpReport
from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
from kubectl_zsniff.formats.pcapng import NameRecords, PacketRecord, read_capture
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.names.map import PodName
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
from kubectl_zsniff.pipeline.packetaddr import ip_addresses
from kubectl_zsniff.sinks import Sink

POD = PodInfo("shop", "web-1", "node-a", ("app",), "Running", ("10.244.1.1", "fd00::1"))
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def udp_frame(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
    )
    udp = struct.pack(">HHHH", 40000, 53, 8 + len(payload), 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + payload


def udp6_frame(src: str, dst: str) -> bytes:
    import ipaddress

    payload = b"hi"
    ip6 = struct.pack(">IHBB", 0x60000000, 8 + len(payload), 17, 64)
    ip6 += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    udp = struct.pack(">HHHH", 1, 2, 10, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + udp + payload


class CollectingSink(Sink):
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.label = fmt
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> int:
        return len(self.data)


def pipeline(book: NameBook | None, limits: CaptureLimits | None = None,
             formats: tuple[str, ...] = ("pcapng",)) -> tuple[OutputPipeline, list[CollectingSink]]:
    sinks = [CollectingSink(f) for f in formats]
    pipe = OutputPipeline(sinks, POD, "zsniff-abc", "ctx", TcpdumpOptions(),
                          limits or CaptureLimits(), book)
    return pipe, sinks


def tshark_names(path: Path) -> list[tuple[str, str, str]]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-N", "n", "-T", "fields", "-e", "ip.src_host",
         "-e", "ip.dst_host", "-e", "frame.comment"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [tuple((line.split("\t") + ["", "", ""])[:3]) for line in out.splitlines()]  # type: ignore[misc]


def test_ip_addresses_of_ethernet_ipv4_and_ipv6_frames() -> None:
    assert ip_addresses(1, udp_frame("10.0.0.1", "10.0.0.2")) == ("10.0.0.1", "10.0.0.2")
    assert ip_addresses(1, udp6_frame("fd00::1", "fd00::2")) == ("fd00::1", "fd00::2")
    assert ip_addresses(1, b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28) is None  # ARP
    assert ip_addresses(101, udp_frame("10.0.0.1", "10.0.0.2")[14:]) == ("10.0.0.1", "10.0.0.2")


def test_stream_cut_anywhere_yields_only_whole_packets() -> None:
    stream = encode_pcap_header(1) + b"".join(
        encode_pcap_record(100 + i, 0, udp_frame("10.244.1.1", "10.244.1.2")) for i in range(5)
    )
    pipe, (sink,) = pipeline(None)
    cut = len(stream) - 10
    for i in range(0, cut, 7):  # odd chunking, stream lost inside the last packet
        pipe.feed(stream[i : min(i + 7, cut)])
    packets = [e for e in read_capture(bytes(sink.data), allow_truncated=False)
               if isinstance(e, PacketRecord)]
    assert len(packets) == 4
    assert pipe.packets == 4


def test_pcap_passthrough_is_byte_identical() -> None:
    stream = encode_pcap_header(1, nanosecond=True) + b"".join(
        encode_pcap_record(100 + i, 7, udp_frame("10.244.1.1", "10.244.1.2"))
        for i in range(50)
    )
    for limits in (CaptureLimits(), CaptureLimits(max_bytes=10**9)):
        pipe, (sink,) = pipeline(None, limits, ("pcap",))
        for i in range(0, len(stream), 1000):
            pipe.feed(stream[i : i + 1000])
        assert bytes(sink.data) == stream


def test_packet_count_limit_stops_exactly() -> None:
    stream = encode_pcap_header(1) + b"".join(
        encode_pcap_record(100 + i, 0, udp_frame("10.244.1.1", "10.244.1.2")) for i in range(10)
    )
    pipe, (sink,) = pipeline(None, CaptureLimits(packet_count=3))
    pipe.feed(stream)
    assert pipe.stop_reason is StopReason.PACKET_LIMIT
    assert sum(isinstance(e, PacketRecord) for e in read_capture(bytes(sink.data))) == 3


def test_size_limit_keeps_the_file_under_the_limit() -> None:
    stream = encode_pcap_header(1) + b"".join(
        encode_pcap_record(100 + i, 0, udp_frame("10.244.1.1", "10.244.1.2", b"x" * 900))
        for i in range(50)
    )
    pipe, (sink,) = pipeline(None, CaptureLimits(max_bytes=10_000))
    pipe.feed(stream)
    assert pipe.stop_reason is StopReason.SIZE_LIMIT
    assert 5_000 < len(sink.data) <= 10_000


@needs_tshark
def test_new_pod_and_reused_address_are_named_per_packet(tmp_path: Path) -> None:
    book = NameBook(clock=lambda: 0.0)
    book.set_object(("pods", "shop", "web-1"), [("10.244.1.1", PodName("shop/web-1", "shop"))])
    book.set_object(("pods", "shop", "old"), [("10.244.1.9", PodName("shop/old", "shop"))])
    book.drain_changes()
    pipe, (sink,) = pipeline(book)
    pipe.feed(encode_pcap_header(1))
    pipe.feed(encode_pcap_record(100, 0, udp_frame("10.244.1.9", "10.244.1.1")))
    # A pod appears during the capture and talks to the captured pod.
    book.set_object(("pods", "shop", "new"), [("10.244.1.7", PodName("shop/new", "shop"))])
    pipe.feed(encode_pcap_record(101, 0, udp_frame("10.244.1.7", "10.244.1.1")))
    # The old pod goes away and its address is given to another pod.
    book.set_object(("pods", "shop", "old"), [])
    pipe.feed(encode_pcap_record(102, 0, udp_frame("10.244.1.9", "10.244.1.1")))
    book.set_object(("pods", "shop", "heir"), [("10.244.1.9", PodName("shop/heir", "shop"))])
    pipe.feed(encode_pcap_record(103, 0, udp_frame("10.244.1.9", "10.244.1.1")))
    path = tmp_path / "live.pcapng"
    path.write_bytes(sink.data)

    rows = tshark_names(path)
    assert [(src, dst) for src, dst, _ in rows] == [
        ("shop/old", "shop/web-1"),
        ("shop/new", "shop/web-1"),
        ("10.244.1.9", "shop/web-1"),  # released: no stale name while the owner is unknown
        ("shop/heir", "shop/web-1"),
    ]
    # Packets of a re-owned address carry their owner at capture time for two-pass readers.
    assert rows[0][2] == ""
    assert "10.244.1.9 was 10.244.1.9" in rows[2][2]
    assert "10.244.1.9 was shop/heir" in rows[3][2]
    # Every NRB precedes the first packet that needs it.
    events = list(read_capture(path.read_bytes()))
    kinds = ["N" if isinstance(e, NameRecords) else "P" for e in events
             if isinstance(e, NameRecords | PacketRecord)]
    assert kinds == ["N", "P", "N", "P", "N", "P", "N", "P"]


@needs_tshark
def test_preamble_names_the_captured_pod_even_without_a_name_book(tmp_path: Path) -> None:
    pipe, (sink,) = pipeline(None)
    pipe.feed(encode_pcap_header(1))
    pipe.feed(encode_pcap_record(100, 0, udp_frame("10.244.1.1", "10.244.1.3")))
    path = tmp_path / "one.pcapng"
    path.write_bytes(sink.data)
    assert tshark_names(path)[0][:2] == ("shop/web-1", "10.244.1.3")
    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert "shop/web-1" in info  # the interface is named after the pod
    assert "kubectl-zsniff" in info


def test_tcpdump_report_reads_pid_counters_and_errors() -> None:
    report = TcpdumpReport()
    report.feed(b"zsniff-pid 4242\ntcpdump: listening on eth0, link-type EN10MB\n")
    report.feed(b"12 packets captured\n13 packets received by filter\n1 packet dropped by ker")
    report.feed(b"nel\ntcpdump: syntax error")
    report.finish()
    assert report.pid == 4242
    assert (report.captured, report.received, report.dropped) == (12, 13, 1)
    assert report.errors[-1] == "tcpdump: syntax error"


def random_stream(rng: random.Random, count: int, *, order: str = "<",
                  nanosecond: bool = False) -> bytes:
    """A pcap stream of `count` records: IPv4 UDP frames between pods, and odd-sized junk."""
    addresses = ["10.244.1.1", "10.244.1.7", "10.244.1.9", "10.9.9.9"]
    records = []
    for i in range(count):
        if rng.random() < 0.7:
            frame = udp_frame(rng.choice(addresses), rng.choice(addresses),
                              rng.randbytes(rng.randrange(0, 1500)))
        else:
            frame = rng.randbytes(rng.randrange(0, 200))
        origlen = len(frame) + rng.choice((0, 0, 3))
        records.append(encode_pcap_record(1_700_000_000 + i, rng.randrange(10**6), frame,
                                          origlen, byte_order=order))  # type: ignore[arg-type]
    return encode_pcap_header(1, nanosecond=nanosecond,
                              byte_order=order) + b"".join(records)  # type: ignore[arg-type]


def run_pipeline(stream: bytes, cuts: list[int], fused: bool, limits: CaptureLimits,
                 formats: tuple[str, ...], book: NameBook | None = None,
                 changes: dict[int, Callable[[NameBook], None]] | None = None,
                 ) -> tuple[list[bytes], tuple[object, ...]]:
    pipe, sinks = pipeline(book, limits, formats)
    pipe.fused_pcapng = fused
    start = 0
    for n, cut in enumerate([*cuts, len(stream)]):
        if changes and book is not None and n in changes:
            changes[n](book)
        pipe.feed(memoryview(stream)[start:cut])
        start = cut
    state = (pipe.stop_reason, pipe.packets, pipe.data_bytes, pipe.output_bytes,
             pipe.names_written, [(lane.packets, lane.data_bytes) for lane in pipe.lanes])
    return [bytes(s.data) for s in sinks], state


@pytest.mark.parametrize("seed", range(12))
def test_fused_pcapng_path_writes_what_the_packet_path_writes(seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng, rng.randrange(1, 300), order=rng.choice("<>"),
                           nanosecond=rng.random() < 0.5)
    for _ in range(4):
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1,
                                                            rng.choice((1, 5, 40, 400)))))
        limits = rng.choice((
            CaptureLimits(),
            CaptureLimits(packet_count=rng.randrange(1, 320)),
            CaptureLimits(max_bytes=rng.randrange(100, len(stream) + 500)),
            CaptureLimits(packet_count=rng.randrange(1, 320),
                          max_bytes=rng.randrange(100, len(stream) + 500)),
        ))
        formats = rng.choice((("pcapng",), ("pcapng", "pcap"), ("pcap", "pcapng")))
        fused = run_pipeline(stream, cuts, True, limits, formats)
        reference = run_pipeline(stream, cuts, False, limits, formats)
        assert fused == reference


@pytest.mark.parametrize("seed", range(4))
def test_fused_pcapng_path_with_names_and_owner_changes(seed: int) -> None:
    rng = random.Random(100 + seed)
    stream = random_stream(rng, 200)
    cuts = sorted(rng.sample(range(1, len(stream)), 30))

    def appear(book: NameBook) -> None:
        book.set_object(("pods", "shop", "new"), [("10.244.1.7", PodName("shop/new", "shop"))])

    def release(book: NameBook) -> None:
        book.set_object(("pods", "shop", "old"), [])

    def reuse(book: NameBook) -> None:
        book.set_object(("pods", "shop", "heir"), [("10.244.1.9", PodName("shop/heir", "shop"))])

    changes = {5: appear, 12: release, 20: reuse}
    outputs = []
    for fused in (True, False):
        book = NameBook(clock=lambda: 0.0)
        book.set_object(("pods", "shop", "web-1"), [("10.244.1.1", PodName("shop/web-1", "shop"))])
        book.set_object(("pods", "shop", "old"), [("10.244.1.9", PodName("shop/old", "shop"))])
        book.drain_changes()
        outputs.append(run_pipeline(stream, cuts, fused, CaptureLimits(), ("pcapng",), book,
                                    changes))
    assert outputs[0] == outputs[1]
    assert b"was shop/heir" in outputs[0][0][0]
