"""The deduplicator, by property over seeded random traffic: what it keeps is the input minus
the copies seen on another interface within the window (TTL, checksum and MACs aside), and
nothing else: not repeats on one interface, not copies outside the window, not other packets.
"""

from __future__ import annotations

import random
import struct

import pytest

from kubectl_zsniff.pipeline.dedup import Deduplicator, packet_key

ETHERNET = 1
MS = 1_000_000
WINDOW = 200 * MS


def ipv4_frame(rng: random.Random, payload: bytes, ttl: int = 64) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload),
                                   rng.randrange(1 << 16), 0x4000, ttl, 17, 0,
                                   bytes(rng.randrange(256) for _ in range(4)),
                                   bytes(rng.randrange(256) for _ in range(4))))
    checksum = _checksum(bytes(header))
    header[10:12] = struct.pack("!H", checksum)
    macs = bytes(rng.randrange(256) for _ in range(12))
    return macs + b"\x08\x00" + bytes(header) + payload


def ipv6_frame(rng: random.Random, payload: bytes, hops: int = 64) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, hops,
                         bytes(rng.randrange(256) for _ in range(16)),
                         bytes(rng.randrange(256) for _ in range(16)))
    return bytes(rng.randrange(256) for _ in range(12)) + b"\x86\xdd" + header + payload


def routed(frame: bytes, rng: random.Random) -> bytes:
    """The same packet one hop on: other MACs, TTL (hop limit) one less, checksum redone."""
    body = bytearray(frame[14:])
    if frame[12:14] == b"\x08\x00":
        body[8] -= 1
        body[10:12] = b"\0\0"
        body[10:12] = struct.pack("!H", _checksum(bytes(body[:20])))
    else:
        body[7] -= 1
    return bytes(rng.randrange(256) for _ in range(12)) + frame[12:14] + bytes(body)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_copies_match_across_a_routed_hop_and_nothing_else_does() -> None:
    rng = random.Random(3)
    for make in (ipv4_frame, ipv6_frame):
        frame = make(rng, b"hello")
        assert packet_key(ETHERNET, frame) == packet_key(ETHERNET, routed(frame, rng))
        other = bytearray(frame)
        other[-1] ^= 1
        assert packet_key(ETHERNET, frame) != packet_key(ETHERNET, bytes(other))
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert packet_key(ETHERNET, arp) is None


@pytest.mark.parametrize("seed", range(40))
def test_the_output_is_the_input_minus_the_copies(seed: int) -> None:
    rng = random.Random(seed)
    lanes = rng.randrange(2, 5)
    traffic: list[tuple[int, int, bytes, bool]] = []  # (ts, lane, frame, is a copy to drop)
    ts = 0
    for _ in range(rng.randrange(1, 400)):
        ts += rng.randrange(0, 20 * MS)
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        frame = rng.choice((ipv4_frame, ipv6_frame))(rng, payload)
        lane = rng.randrange(lanes)
        traffic.append((ts, lane, frame, False))
        roll = rng.random()
        if roll < 0.5:  # seen entering another captured pod, a moment later
            other = rng.choice([n for n in range(lanes) if n != lane])
            traffic.append((ts + rng.randrange(0, WINDOW), other, routed(frame, rng), True))
        elif roll < 0.6:  # the same bytes again on the same interface: a repeat, kept
            traffic.append((ts + rng.randrange(0, WINDOW), lane, frame, False))
        elif roll < 0.7:  # on another interface but long after: not this packet's copy
            other = rng.choice([n for n in range(lanes) if n != lane])
            traffic.append((ts + 2 * WINDOW + rng.randrange(1, 10 * WINDOW), other,
                            routed(frame, rng), False))
    traffic.sort(key=lambda t: t[0])
    dedup = Deduplicator(WINDOW)
    kept = [(t, lane, frame) for t, lane, frame, _ in traffic
            if not dedup.is_copy(t, lane, packet_key(ETHERNET, frame))]
    expected = [(t, lane, frame) for t, lane, frame, copy in traffic if not copy]
    assert kept == expected
    assert dedup.dropped == sum(copy for *_, copy in traffic)


def test_each_kept_packet_absorbs_one_copy_per_other_interface() -> None:
    rng = random.Random(9)
    frame = ipv4_frame(rng, b"again")
    dedup = Deduplicator(WINDOW)
    verdicts = [dedup.is_copy(ts, lane, packet_key(ETHERNET, f)) for ts, lane, f in [
        (0, "a", frame), (1, "b", frame),  # sent by a, received by b: one copy
        (5, "a", frame), (6, "b", frame),  # the same bytes sent again: a packet, and its copy
        (7, "c", frame),  # a third interface saw it too: one more copy
    ]]
    assert verdicts == [False, True, False, True, True]
    assert dedup.dropped == 3


def test_memory_is_bounded_by_the_window() -> None:
    rng = random.Random(1)
    dedup = Deduplicator(WINDOW)
    for i in range(5000):
        dedup.is_copy(i * MS, i % 2, packet_key(ETHERNET, ipv4_frame(rng, b"x")))
    assert len(dedup) <= WINDOW // MS + 1
