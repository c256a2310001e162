"""Classic libpcap file format: header parsing, a push parser for live streams, encoders.

The push parser sits on the capture hot path (tcpdump's stdout arrives in arbitrary chunks from
the exec websocket), so it works on whole chunks with ``struct.Struct.unpack_from`` at an offset
and keeps only the incomplete tail of the last record between calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.formats.detect import (
    MAGIC_MICROSECONDS,
    MAGIC_NANOSECONDS,
    PCAP_HEADER_LENGTH,
    PCAP_MAGICS,
    SHB_TYPE_BYTES,
    ByteOrder,
)

RECORD_HEADER_LENGTH = 16

# libpcap's own ceiling for most link types; a larger caplen means the stream is out of sync.
DEFAULT_MAX_CAPLEN = 262_144

# The link type field also carries FCS information in its top 4 bits.
_LINKTYPE_MASK = 0x0FFF_FFFF

_HEADER = {order: struct.Struct(order + "IHHiIII") for order in ("<", ">")}
_RECORD = {order: struct.Struct(order + "IIII") for order in ("<", ">")}
# caplen alone, at offset 8 of a record header.
_CAPLEN = {order: struct.Struct(order + "8xI") for order in ("<", ">")}


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
    found = PCAP_MAGICS.get(bytes(magic))
    if found is not None:
        return found
    if bytes(magic) == SHB_TYPE_BYTES:
        raise PcapFormatError(
            "input is pcapng, not classic pcap",
            hint="read it with kubectl_zsniff.formats.pcapng.read_capture",
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
        "_caplen",
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
        self._caplen: struct.Struct | None = None

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    @property
    def record_struct(self) -> struct.Struct:
        """The record header layout (ts_sec, ts_frac, caplen, origlen) in the stream's order."""
        if self._record is None:
            raise PcapFormatError("no pcap header parsed yet")
        return self._record

    def _take(self, chunk: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        """Return the data to parse now, or None while the next unit is still incomplete."""
        size = len(chunk)
        self.bytes += size
        pending = self._pending
        if not pending and size >= self._needed:
            return chunk
        if len(pending) + size >= self._needed:
            # A record spans the previous chunk and this one: glue them with one copy
            # (appending to the bytearray, then converting it, would copy the chunk twice).
            data = b"".join((pending, chunk))
            pending.clear()
            return data
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
        self._caplen = _CAPLEN[header.byte_order]
        if self.max_caplen is None:
            self.max_caplen = max(header.snaplen, DEFAULT_MAX_CAPLEN)
        return PCAP_HEADER_LENGTH

    # -- hooks for fused walkers (pcapng.PcapngPacketEncoder.feed_pcap) ---------------------

    def take_chunk(
        self, chunk: bytes | bytearray | memoryview
    ) -> tuple[bytes | bytearray | memoryview, int] | None:
        """Start a chunk for an outside record walker: (data, offset of its first record).

        None while the next record is still incomplete. The walker must then call
        ``finish_chunk`` with where it stopped.
        """
        data = self._take(chunk)
        if data is None:
            return None
        return data, self._read_header(data) if self.header is None else 0

    def finish_chunk(
        self,
        data: bytes | bytearray | memoryview,
        first: int,
        offset: int,
        count: int,
        needed: int,
    ) -> None:
        """Account ``count`` whole records in ``data[first:offset]``; keep the rest pending.

        ``needed``: how many bytes the record at ``offset`` needs (16 when unknown).
        """
        self.packets += count
        self.data_bytes += offset - first - RECORD_HEADER_LENGTH * count
        self._keep_tail(data, offset, needed)

    def bad_caplen(self, caplen: int, seen: int = 0) -> PcapFormatError:
        """The error for a record claiming more than ``max_caplen`` bytes, after ``seen``
        records of the current chunk."""
        return PcapFormatError(
            f"pcap record {self.packets + seen + 1} claims {caplen} captured bytes, more than "
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
                    raise self.bad_caplen(caplen)
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

    def feed_raw(self, chunk: bytes | bytearray | memoryview) -> tuple[bytes | memoryview, int]:
        """Split without building packets: return (whole records as raw pcap bytes, count).

        For pass-through (classic pcap to stdout, counting, size limits): the returned bytes
        never end inside a record, and exclude the global header (see ``header``). They are
        a memoryview into ``chunk`` (or into this parser's own copy of a record that spanned
        chunks) when possible: write or copy them before the next ``feed_raw``; the data
        never changes under the view (``chunk`` is only read, the parser's copy is bytes).
        """
        data = self._take(chunk)
        if data is None:
            return b"", 0
        offset = 0
        if self.header is None:
            offset = self._read_header(data)
        first = offset
        # Only caplen is needed here: a struct that skips the timestamps and origlen, so each
        # record costs one unpack, two comparisons and an addition.
        assert self._caplen is not None
        unpack_caplen = self._caplen.unpack_from
        max_caplen = self.max_caplen
        assert max_caplen is not None
        end = len(data)
        last = end - RECORD_HEADER_LENGTH
        count = 0
        needed = RECORD_HEADER_LENGTH
        while offset <= last:
            (caplen,) = unpack_caplen(data, offset)
            if caplen > max_caplen:
                raise self.bad_caplen(caplen)
            stop = offset + RECORD_HEADER_LENGTH + caplen
            if stop > end:
                needed = RECORD_HEADER_LENGTH + caplen
                break
            count += 1
            offset = stop
        self.packets += count
        # Record data bytes are the span minus one header per record: no running sum needed.
        self.data_bytes += offset - first - RECORD_HEADER_LENGTH * count
        whole: bytes | memoryview
        if isinstance(data, bytearray):
            # A caller's bytearray may be resized after the call: a view would pin it.
            whole = bytes(data[first:offset])
        elif first == 0 and offset == end and isinstance(data, bytes):
            whole = data
        else:
            whole = memoryview(data)[first:offset]
        self._keep_tail(data, offset, needed)
        return whole, count
