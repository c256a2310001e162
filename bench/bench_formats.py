"""Micro benchmark of the capture hot path: pcap push parser and pcapng EPB encoder.

Run: python bench/bench_formats.py [--seconds 0.5]
Prints MB/s and packets/s for 64-byte and 1500-byte packets, each next to a baseline measured in
the same run (a plain copy of the same bytes), so ratios stay meaningful across machines.
Not a test: it never fails on timing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubectl_zsniff.formats.pcap import (  # noqa: E402
    Packet,
    PcapStreamParser,
    encode_pcap_header,
    encode_pcap_record,
)
from kubectl_zsniff.formats.pcapng import (  # noqa: E402
    CapturePushParser,
    PcapngPacketEncoder,
    enhanced_packet_block,
    interface_description_block,
    section_header_block,
)

CHUNK = 256 * 1024
STREAM_BYTES = 32 * 1024 * 1024


def best_rate(run: Callable[[], object], seconds: float) -> float:
    """Best (fastest) single run time over repeated runs for about ``seconds``."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return best


def make_packets(size: int, count: int) -> list[Packet]:
    payload = random.Random(size).randbytes(size)
    return [
        Packet(1_700_000_000 + i // 1000, i % 1000 * 1000, size, size, payload)
        for i in range(count)
    ]


def report(
    label: str, nbytes: int, npackets: int, elapsed: float, baseline: tuple[str, float] | None
) -> None:
    mbps = nbytes / elapsed / 1e6
    ratio = f"{baseline[1] / elapsed:6.2f}x {baseline[0]}" if baseline else "(baseline)"
    print(f"  {label:<40} {mbps:9.1f} MB/s {npackets / elapsed:12,.0f} pkt/s  {ratio}")


def bench_size(size: int, seconds: float) -> None:
    count = max(1000, STREAM_BYTES // (size + 16))
    packets = make_packets(size, count)
    stream = encode_pcap_header(1, nanosecond=True) + b"".join(
        encode_pcap_record(p.ts_sec, p.ts_frac, p.data) for p in packets
    )
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    print(
        f"\n{size}-byte packets: {count:,} packets, {len(stream) / 1e6:.1f} MB pcap, "
        f"{CHUNK // 1024} KiB chunks"
    )
    scratch = bytearray(CHUNK)

    def copy_chunks() -> None:
        # Copy into one reused buffer: fresh 256 KiB objects would measure mmap page faults.
        for chunk in chunks:
            scratch[: len(chunk)] = chunk

    offsets = list(range(24 + 16, len(stream), size + 16))
    memcpy = ("of memcpy", best_rate(copy_chunks, seconds))
    slicing = ("of slicing", best_rate(lambda: [stream[o : o + size] for o in offsets], seconds))
    report("baseline: memcpy the chunks", len(stream), count, memcpy[1], None)
    report("baseline: slice out each packet", len(stream), count, slicing[1], None)

    def parse() -> None:
        parser = PcapStreamParser()
        for chunk in chunks:
            parser.feed(chunk)
        assert parser.packets == count

    def split_raw() -> None:
        parser = PcapStreamParser()
        for chunk in chunks:
            parser.feed_raw(chunk)
        assert parser.packets == count

    report(
        "PcapStreamParser.feed -> Packet", len(stream), count, best_rate(parse, seconds), slicing
    )
    report(
        "PcapStreamParser.feed_raw (split only)",
        len(stream),
        count,
        best_rate(split_raw, seconds),
        memcpy,
    )

    encoder = PcapngPacketEncoder(0, packet_nanosecond=True)
    encoded_size = len(encoder.encode_batch(packets))
    batches = [packets[i : i + 1000] for i in range(0, count, 1000)]
    join = ("of join", best_rate(lambda: [b"".join([p.data for p in b]) for b in batches], seconds))
    report("baseline: join packet data (1000/batch)", encoded_size, count, join[1], None)
    report(
        "PcapngPacketEncoder.encode_batch",
        encoded_size,
        count,
        best_rate(lambda: [encoder.encode_batch(b) for b in batches], seconds),
        join,
    )
    report(
        "enhanced_packet_block per packet",
        encoded_size,
        count,
        best_rate(
            lambda: [
                enhanced_packet_block(0, p.ts_sec * 10**9 + p.ts_frac, p.caplen, p.origlen, p.data)
                for p in packets
            ],
            seconds,
        ),
        join,
    )

    def pipeline() -> None:
        parser = PcapStreamParser()
        for chunk in chunks:
            encoder.encode_batch(parser.feed(chunk))

    report(
        "pcap chunks -> pcapng (parse+encode)",
        len(stream),
        count,
        best_rate(pipeline, seconds),
        slicing,
    )

    pcapng = (
        section_header_block()
        + interface_description_block(1, 0, tsresol_nanos=True)
        + encoder.encode_batch(packets)
    )
    ng_chunks = [pcapng[i : i + CHUNK] for i in range(0, len(pcapng), CHUNK)]

    def read_pcapng() -> None:
        reader = CapturePushParser()
        for chunk in ng_chunks:
            reader.feed(chunk)
        assert reader.packets == count

    report(
        "CapturePushParser on pcapng (offline)",
        len(pcapng),
        count,
        best_rate(read_pcapng, seconds),
        slicing,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; best of repeated runs, ~{args.seconds}s each")
    for size in (64, 1500):
        bench_size(size, args.seconds)


if __name__ == "__main__":
    main()
