"""Both ends captured once: a packet seen leaving one captured pod and entering another.

Matching: two copies are the same IP packet when their IP header and everything captured after
it are byte for byte equal once the fields a router changes are set aside (IPv4: TTL and header
checksum; IPv6: hop limit); the link-layer header is ignored (MAC addresses change across a
routed hop). A copy is dropped when it is on another pod's interface than the kept one and at
most `window` (default 200 ms) later or earlier; each kept packet absorbs at most one copy per
other interface, so a real retransmission (the same bytes sent again) is kept, and so is any
repeat on the same interface. Non-IP frames (ARP) are never matched. Traffic through a Service
address is NATed between the two ends (another destination address): those copies differ and
are both kept.

Which copy stays: the first in time, normally the sender's (its timestamp is when the packet
left); the merged order (pipeline/merge.py) makes that the first one seen here.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Hashable

from kubectl_zsniff.pipeline.packetaddr import network_offset
from kubectl_zsniff.words import plural

DEFAULT_WINDOW_NS = 200_000_000
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD


def packet_key(linktype: int, frame: bytes) -> bytes | None:
    """What two copies of one IP packet share (see the module's words); None: not IP."""
    located = network_offset(linktype, frame)
    if located is None:
        return None
    offset, ethertype = located
    ip = bytearray(frame[offset:])
    if ethertype == _ETHERTYPE_IPV4 and len(ip) >= 20 and ip[0] >> 4 == 4:
        ip[8] = 0  # TTL
        ip[10:12] = b"\0\0"  # header checksum (changes with the TTL)
    elif ethertype == _ETHERTYPE_IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        ip[7] = 0  # hop limit
    else:
        return None
    return hashlib.blake2b(ip, digest_size=16).digest()


class _Seen:
    __slots__ = ("ts_ns", "where", "absorbed")

    def __init__(self, ts_ns: int, where: Hashable) -> None:
        self.ts_ns = ts_ns
        self.where = where
        self.absorbed: set[Hashable] = set()


class Deduplicator:
    """Feed packets in (about) time order; `is_copy` says which to drop."""

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self.dropped = 0
        self._table: dict[bytes, deque[_Seen]] = {}
        self._order: deque[tuple[int, bytes]] = deque()  # (ts, key), as kept
        self._newest_ns = 0

    def is_copy(self, ts_ns: int, where: Hashable, key: bytes | None) -> bool:
        """True when this packet (at `ts_ns`, on interface `where`) is another interface's
        packet seen again: drop it. Otherwise it is remembered for `window`."""
        if ts_ns > self._newest_ns:
            self._newest_ns = ts_ns
            self._expire()
        if key is None:
            return False
        entries = self._table.get(key)
        if entries is not None:
            for seen in entries:
                if (seen.where != where and where not in seen.absorbed
                        and abs(ts_ns - seen.ts_ns) <= self.window_ns):
                    seen.absorbed.add(where)
                    self.dropped += 1
                    return True
        else:
            entries = self._table[key] = deque()
        entries.append(_Seen(ts_ns, where))
        self._order.append((ts_ns, key))
        return False

    def note(self) -> str:
        """What it dropped, for the summary."""
        return (f"--dedup: {plural(self.dropped, 'copy', 'copies')} of packets seen at both "
                "ends dropped (the same IP packet on another pod's interface within "
                f"{self.window_ns / 1e6:g} ms)")

    def __len__(self) -> int:
        """Packets remembered now (memory: one 16-byte key and a few objects each)."""
        return len(self._order)

    def _expire(self) -> None:
        horizon = self._newest_ns - self.window_ns
        order, table = self._order, self._table
        while order and order[0][0] < horizon:
            _, key = order.popleft()
            entries = table.get(key)
            if entries:
                entries.popleft()
                if not entries:
                    del table[key]
