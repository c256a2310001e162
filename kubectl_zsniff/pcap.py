"""Classic libpcap file format: header parsing, a push parser for live streams, encoders.

The push parser sits on the capture hot path (tcpdump's stdout arrives in arbitrary chunks from
the exec websocket), so it works on whole chunks with ``struct.Struct.unpack_from`` at an offset
and keeps only the incomplete tail of the last record between calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kubectl_zsniff.errors import ZsniffError

ByteOrder = Literal["<", ">"]

MAGIC_MICROSECONDS = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
PCAPNG_SHB_MAGIC = 0x0A0D0D0A
PCAP_HEADER_LENGTH = 24
RECORD_HEADER_LENGTH = 16

# libpcap's own ceiling for most link types; a larger caplen means the stream is out of sync.
DEFAULT_MAX_CAPLEN = 262_144

# The link type field also carries FCS information in its top 4 bits.
_LINKTYPE_MASK = 0x0FFF_FFFF

_MAGIC_LE = struct.Struct("<I")
_HEADER = {order: struct.Struct(order + "IHHiIII") for order in ("<", ">")}
_RECORD = {order: struct.Struct(order + "IIII") for order in ("<", ">")}
_MAGIC_TO_FORMAT: dict[bytes, tuple[ByteOrder, bool]] = {
    struct.pack("<I", MAGIC_MICROSECONDS): ("<", False),
    struct.pack(">I", MAGIC_MICROSECONDS): (">", False),
    struct.pack("<I", MAGIC_NANOSECONDS): ("<", True),
    struct.pack(">I", MAGIC_NANOSECONDS): (">", True),
}


class PcapFormatError(ZsniffError, ValueError):
    """The bytes are not a (valid) classic pcap stream."""


@dataclass(frozen=True, slots=True)
class PcapHeader:
    byte_order: ByteOrder
    nanosecond: bool
    version_major: int
    version_minor: int
    snaplen: int
    linktype: int
    thiszone: int = 0
    sigfigs: int = 0

    @property
    def ticks_per_second(self) -> int:
        return 1_000_000_000 if self.nanosecond else 1_000_000

    def timestamp_ns(self, packet: Packet) -> int:
        return packet.ts_ns(self.nanosecond)


class Packet(NamedTuple):
    """One pcap record. ``ts_frac`` is in micro- or nanoseconds, as the file header says."""

    ts_sec: int
    ts_frac: int
    caplen: int
    origlen: int
    data: bytes

    def ts_ns(self, nanosecond: bool) -> int:
        if nanosecond:
            return self.ts_sec * 1_000_000_000 + self.ts_frac
        return self.ts_sec * 1_000_000_000 + self.ts_frac * 1_000


def _format_for_magic(magic: bytes) -> tuple[ByteOrder, bool]:
    found = _MAGIC_TO_FORMAT.get(bytes(magic))
    if found is not None:
        return found
    if len(magic) == 4 and _MAGIC_LE.unpack(magic)[0] == PCAPNG_SHB_MAGIC:
        raise PcapFormatError(
            "input is pcapng, not classic pcap",
            hint="read it with kubectl_zsniff.pcapng.read_capture",
        )
    raise PcapFormatError(
        f"not a pcap stream: magic {bytes(magic).hex()} is none of the four pcap magics",
        hint="the first bytes may be an error message: check tcpdump's stderr",
    )


def parse_pcap_header(b: bytes | bytearray | memoryview) -> PcapHeader:
    """Parse the 24-byte global header at the start of ``b``."""
    if len(b) < PCAP_HEADER_LENGTH:
        raise PcapFormatError(f"pcap header needs 24 bytes, got {len(b)}")
    order, nanosecond = _format_for_magic(bytes(b[:4]))
    _, major, minor, thiszone, sigfigs, snaplen, linktype = _HEADER[order].unpack_from(b, 0)
    if major != 2:
        raise PcapFormatError(f"unsupported pcap version {major}.{minor} (expected 2.x)")
    return PcapHeader(
        byte_order=order,
        nanosecond=nanosecond,
        version_major=major,
        version_minor=minor,
        snaplen=snaplen,
        linktype=linktype & _LINKTYPE_MASK,
        thiszone=thiszone,
        sigfigs=sigfigs,
    )


def encode_pcap_header(
    linktype: int,
    snaplen: int = DEFAULT_MAX_CAPLEN,
    *,
    nanosecond: bool = False,
    byte_order: ByteOrder = "<",
) -> bytes:
    magic = MAGIC_NANOSECONDS if nanosecond else MAGIC_MICROSECONDS
    return _HEADER[byte_order].pack(magic, 2, 4, 0, 0, snaplen, linktype)


def encode_pcap_record(
    ts_sec: int,
    ts_frac: int,
    data: bytes,
    origlen: int | None = None,
    *,
    byte_order: ByteOrder = "<",
) -> bytes:
    length = len(data)
    header = _RECORD[byte_order].pack(
        ts_sec, ts_frac, length, length if origlen is None else origlen
    )
    return header + bytes(data)


_tuple_new = tuple.__new__


class PcapStreamParser:
    """Push parser for a classic pcap byte stream, fed in chunks of any size.

    ``feed`` returns the whole records completed by the chunk; a record cut by the chunk
    boundary stays buffered (see ``pending_bytes``) until the rest arrives.
    """

    __slots__ = (
        "header",
        "packets",
        "bytes",
        "data_bytes",
        "max_caplen",
        "_pending",
        "_needed",
        "_record",
    )

    def __init__(self, max_caplen: int | None = None) -> None:
        self.header: PcapHeader | None = None
        self.packets = 0
        self.bytes = 0  # every byte fed, header included
        self.data_bytes = 0  # sum of caplen of emitted records
        self.max_caplen = max_caplen
        self._pending = bytearray()
        # How many buffered bytes the next parse step needs: lets 1-byte feeds skip all work
        # until a whole record is there, so small chunks cost O(1) each.
        self._needed = PCAP_HEADER_LENGTH
        self._record: struct.Struct | None = None

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def _take(self, chunk: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        """Return the data to parse now, or None while the next unit is still incomplete."""
        size = len(chunk)
        self.bytes += size
        pending = self._pending
        if not pending and size >= self._needed:
            return chunk
        pending += chunk
        if len(pending) < self._needed:
            if self.header is None and len(pending) >= 4:
                # Reject junk (an error message on stdout) now rather than at byte 24.
                _format_for_magic(bytes(pending[:4]))
            return None
        data = bytes(pending)
        pending.clear()
        return data

    def _keep_tail(self, data: bytes | bytearray | memoryview, offset: int, needed: int) -> None:
        if offset < len(data):
            self._pending += data[offset:]
        self._needed = needed

    def _read_header(self, data: bytes | bytearray | memoryview) -> int:
        header = parse_pcap_header(data)
        self.header = header
        self._record = _RECORD[header.byte_order]
        if self.max_caplen is None:
            self.max_caplen = max(header.snaplen, DEFAULT_MAX_CAPLEN)
        return PCAP_HEADER_LENGTH

    def _bad_caplen(self, caplen: int) -> PcapFormatError:
        return PcapFormatError(
            f"pcap record {self.packets + 1} claims {caplen} captured bytes, more than "
            f"{self.max_caplen}: the stream is corrupt or out of sync",
        )

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Packet]:
        data = self._take(chunk)
        if data is None:
            return []
        offset = 0
        if self.header is None:
            offset = self._read_header(data)
        record = self._record
        assert record is not None
        unpack_from = record.unpack_from
        max_caplen = self.max_caplen
        assert max_caplen is not None
        end = len(data)
        packets: list[Packet] = []
        append = packets.append
        data_bytes = 0
        view = memoryview(data) if isinstance(data, memoryview | bytearray) else None
        needed = RECORD_HEADER_LENGTH
        try:
            while end - offset >= RECORD_HEADER_LENGTH:
                fields = unpack_from(data, offset)
                caplen = fields[2]
                if caplen > max_caplen:
                    raise self._bad_caplen(caplen)
                start = offset + RECORD_HEADER_LENGTH
                stop = start + caplen
                if stop > end:
                    needed = RECORD_HEADER_LENGTH + caplen
                    break
                payload = bytes(view[start:stop]) if view is not None else data[start:stop]
                append(_tuple_new(Packet, (*fields, payload)))
                data_bytes += caplen
                offset = stop
        finally:
            if view is not None:
                view.release()
        self.packets += len(packets)
        self.data_bytes += data_bytes
        self._keep_tail(data, offset, needed)
        return packets

    def feed_raw(self, chunk: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Split without building packets: return (whole records as raw pcap bytes, count).

        For pass-through (classic pcap to stdout, counting, size limits): the returned bytes
        never end inside a record, and exclude the global header (see ``header``).
        """
        data = self._take(chunk)
        if data is None:
            return b"", 0
        offset = 0
        if self.header is None:
            offset = self._read_header(data)
        first = offset
        record = self._record
        assert record is not None
        unpack_from = record.unpack_from
        max_caplen = self.max_caplen
        assert max_caplen is not None
        end = len(data)
        count = 0
        data_bytes = 0
        needed = RECORD_HEADER_LENGTH
        while end - offset >= RECORD_HEADER_LENGTH:
            caplen = unpack_from(data, offset)[2]
            if caplen > max_caplen:
                raise self._bad_caplen(caplen)
            stop = offset + RECORD_HEADER_LENGTH + caplen
            if stop > end:
                needed = RECORD_HEADER_LENGTH + caplen
                break
            count += 1
            data_bytes += caplen
            offset = stop
        self.packets += count
        self.data_bytes += data_bytes
        whole = bytes(data[first:offset])
        self._keep_tail(data, offset, needed)
        return whole, count
