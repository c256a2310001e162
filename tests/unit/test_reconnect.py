"""Reconnect and live counters, the pure parts: the gap in the file, tcpdump's live counters
across a reconnect, the backoff, the status line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kubectl_zsniff.capture.reconnect import Gap, backoff_delays
from kubectl_zsniff.capture.run import TcpdumpReport
from kubectl_zsniff.cli.console import status_line
from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
from kubectl_zsniff.formats.pcapng import PacketRecord, read_capture
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
from kubectl_zsniff.pipeline.output import OutputPipeline
from tests.unit.capture_fixtures import require_tool, udp_frame
from tests.unit.test_pipeline import CollectingSink

WEB = PodInfo("shop", "web-1", "node-a", ("app",), "Running", ("10.244.1.1",))


def stream_of(first: int, count: int) -> bytes:
    return b"".join(
        encode_pcap_record(1_700_000_000 + n, 0,
                           udp_frame("10.244.1.1", "10.244.1.9", n.to_bytes(4, "big")))
        for n in range(first, first + count))


def test_a_new_tcpdump_after_a_gap_continues_the_same_interface_with_a_comment(
        tmp_path: Path) -> None:
    pcapng, pcap = CollectingSink("pcapng"), CollectingSink("pcap")
    pipe = OutputPipeline([pcapng, pcap], WEB, "zsniff-a", "ctx", TcpdumpOptions(),
                          CaptureLimits(), None)
    lane = pipe.lanes[0]
    old = encode_pcap_header(1) + stream_of(0, 5)
    pipe.feed(old[:-7])  # the stream is lost inside the fifth packet
    gap = Gap("shop/web-1", 1_700_000_004.0, "the stream ended: closed by the server",
              resumed_at=1_700_000_006.5, attempts=2)
    lane.resume_after_gap(gap.comment)
    new = encode_pcap_header(1) + stream_of(7, 5)
    for offset in range(0, len(new), 5):  # the new header arrives in pieces
        pipe.feed(new[offset:offset + 5])
    path = tmp_path / "gap.pcapng"
    path.write_bytes(bytes(pcapng.data))
    packets = [e for e in read_capture(path.read_bytes(), allow_truncated=False)
               if isinstance(e, PacketRecord)]
    assert [int.from_bytes(p.data[42:46], "big") for p in packets] == [0, 1, 2, 3, 7, 8, 9, 10,
                                                                        11]
    assert {p.interface_id for p in packets} == {0}
    out = subprocess.run([require_tool("tshark"), "-r", str(path), "-T", "fields",
                          "-e", "frame.comment"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert [i for i, c in enumerate(out) if c] == [4]
    assert "capture gap from" in out[4] and "(2.5 s)" in out[4], out[4]
    assert "packets in it may be missing" in out[4]
    # The classic pcap output: one header, then every whole packet of both tcpdumps.
    assert bytes(pcap.data) == encode_pcap_header(1) + stream_of(0, 4) + stream_of(7, 5)
    assert pipe.packets == 9 and lane.data_bytes == 9 * len(udp_frame("10.244.1.1",
                                                                    "10.244.1.9", b"1234"))


def test_live_counters_add_up_across_tcpdumps() -> None:
    report = TcpdumpReport()
    report.feed(b"zsniff-pid 12\ntcpdump: listening on eth0, link-type EN10MB\n")
    report.feed(b"tcpdump: 40 packets captured, 52 packets received by filter, "
                b"12 packets dropped by kernel\n")
    assert (report.captured, report.received, report.dropped) == (40, 52, 12)
    assert not report.errors and not report.ended
    report.restart()
    assert report.pid is None and report.listening is None
    report.feed(b"zsniff-pid 30\ntcpdump: 1 packet captured, 1 packet received by filter, "
                b"0 packets dropped by kernel\n")
    assert (report.captured, report.dropped) == (41, 12)
    report.feed(b"5 packets captured\n9 packets received by filter\n3 packets dropped by "
                b"kernel\n")
    assert (report.captured, report.received, report.dropped) == (45, 61, 15)
    assert report.ended and not report.errors


def test_backoff_doubles_up_to_ten_seconds() -> None:
    delays = backoff_delays()
    assert [next(delays) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_gap_summary_says_from_to_and_why() -> None:
    gap = Gap("shop/web-1", 0.0, "the stream ended: closed by the server", 3.25, 3)
    assert gap.note == ("gap from 00:00:00.000 UTC to 00:00:03.250 UTC (3.2 s): the stream "
                        "ended: closed by the server; reconnected after 3 attempts, packets in "
                        "the gap may be missing (the file marks it on the next packet)")
    never = Gap("shop/web-1", 0.0, "x", None, 9)
    assert "not reconnected (9 attempts)" in never.note


def test_status_line_shows_drops_and_reconnecting() -> None:
    def text(*args: object) -> str:
        return "".join(p if isinstance(p, str) else p[0]
                       for p in status_line(*args))  # type: ignore[arg-type]

    assert text(10, 2000, 2.0, None, 0).startswith("capturing 10 packets, 2.0 kB, 1.0 kB/s, 2 s")
    assert "0 dropped" in text(10, 2000, 2.0, 0, 0)
    assert "1,234 dropped by the kernel" in text(10, 2000, 2.0, 1234, 0)
    assert text(10, 2000, 2.0, 0, 1).startswith("reconnecting ")
