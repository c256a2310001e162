"""pcapng (draft-ietf-opsawg-pcapng): block encoders, a fast packet encoder, and a reader.

Everything is written little-endian; the Section Header Block's byte-order magic tells readers,
so that is valid on any host. The reader accepts both byte orders, several sections, and
classic pcap too, so offline tools need one entry point.

Each block type's layout (fixed fields, what follows them, options and the event it reads as) is
written once, in ``BLOCK_LAYOUTS``: ``encode_block`` and the block encoders write from it, and
``decode_block`` reads with it. ``BlockFramer`` is the one reader of block framing (the reader
and the terminal view's sink both use it). The fused packet encoder (``PcapngPacketEncoder``)
packs the table's EPB layout itself, for speed.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, NamedTuple

from kubectl_zsniff.formats.detect import (
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    BYTE_ORDER_MAGICS,
    SHB_TYPE_BYTES,
    ByteOrder,
    capture_format,
)
from kubectl_zsniff.formats.pcap import Packet, PcapFormatError, PcapStreamParser

BLOCK_IDB = 0x00000001
BLOCK_PB_OBSOLETE = 0x00000002
BLOCK_SPB = 0x00000003
BLOCK_NRB = 0x00000004
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BLOCK_CUSTOM_COPYABLE = 0x00000BAD
BLOCK_CUSTOM_LOCAL = 0x40000BAD
PACKET_BLOCK_TYPES = frozenset({BLOCK_EPB, BLOCK_SPB, BLOCK_PB_OBSOLETE})

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FILTER = 11
IF_OS = 12
IF_TSOFFSET = 14
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8
NRB_RECORD_END = 0
NRB_RECORD_IPV4 = 1
NRB_RECORD_IPV6 = 2

# Wireshark refuses blocks above 16 MiB for most types; anything near that means corruption.
MAX_BLOCK_LENGTH = 16 * 1024 * 1024
# NRBs are split well below reader limits so one huge cluster cannot produce a block any
# reader rejects, and so a live reader gets names early.
DEFAULT_MAX_NRB_BYTES = 64 * 1024

_NANOS_PER_SECOND = 1_000_000_000
_U32 = struct.Struct("<I")
_OPTION_HEADER = struct.Struct("<HH")
_OPTION_HEADERS = {order: struct.Struct(order + "HH") for order in ("<", ">")}
_NRB_RECORD_HEADER = struct.Struct("<HH")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
_BLOCK_HEADERS = {order: struct.Struct(order + "II") for order in ("<", ">")}
_TRAILERS = {order: struct.Struct(order + "I") for order in ("<", ">")}


def _pad4(length: int) -> int:
    return (length + 3) & ~3


# ---------------------------------------------------------------------------------------------
# Encoders


def _option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"pcapng option {code} value is {len(value)} bytes, over 65535")
    return _OPTION_HEADER.pack(code, len(value)) + value + _PADDING[len(value) & 3]


def frame_block(block_type: int, body: bytes, order: ByteOrder = "<") -> bytes:
    """One whole block: type, total length, ``body`` (padded to 32 bits), total length again."""
    if len(body) & 3:
        raise AssertionError("pcapng block body must be padded to 32 bits")
    total = len(body) + 12
    return _BLOCK_HEADERS[order].pack(block_type, total) + body + _TRAILERS[order].pack(total)


def _split_u64(value: int) -> tuple[int, int]:
    return (value >> 32) & 0xFFFF_FFFF, value & 0xFFFF_FFFF


def section_header_block(
    comment: str | None = None,
    *,
    hardware: str | None = None,
    os: str | None = None,
    userappl: str | None = None,
) -> bytes:
    # Section length -1: we stream, so the length is never known in advance.
    return encode_block(
        BLOCK_SHB,
        (BYTE_ORDER_MAGIC, 1, 0, -1),
        comment=comment,
        hardware=hardware,
        os=os,
        userappl=userappl,
    )


def interface_description_block(
    linktype: int,
    snaplen: int = 0,
    name: str | None = None,
    description: str | None = None,
    tsresol_nanos: bool = False,
    os: str | None = None,
    filter: str | None = None,  # noqa: A002 - the pcapng option's own name
    comment: str | None = None,
) -> bytes:
    return encode_block(
        BLOCK_IDB,
        (linktype, 0, snaplen),
        comment=comment,
        name=name,
        description=description,
        tsresol=_NANOS_PER_SECOND if tsresol_nanos else None,
        filter=filter,
        os=os,
    )


def enhanced_packet_block(
    interface_id: int,
    ts_units: int,
    caplen: int,
    origlen: int,
    data: bytes,
    comment: str | None = None,
) -> bytes:
    """One EPB; ``ts_units`` counts the interface's if_tsresol ticks since the epoch."""
    if caplen != len(data):
        raise ValueError(f"caplen {caplen} differs from the {len(data)} data bytes")
    # The table's EPB layout (``_EPB_HEADER``) packed directly: offline convert calls this per
    # packet, so it skips encode_block's generic join.
    options = encode_options(BLOCK_EPB, comment=comment) if comment is not None else b""
    high, low = _split_u64(ts_units)
    total = 32 + _pad4(caplen) + len(options)
    return b"".join(
        (
            _EPB_HEADER.pack(BLOCK_EPB, total, interface_id, high, low, caplen, origlen),
            data,
            _PADDING[caplen & 3],
            options,
            _U32.pack(total),
        )
    )


def _nrb_record(address: str, names: Sequence[str]) -> list[bytes]:
    """Records for one address; a name list too long for one record becomes several."""
    ip = ipaddress.ip_address(address)
    record_type = NRB_RECORD_IPV4 if ip.version == 4 else NRB_RECORD_IPV6
    packed = ip.packed
    records: list[bytes] = []
    current: list[bytes] = []
    current_length = len(packed)
    for name in names:
        if not name or "\0" in name:
            raise ValueError(f"NRB name for {address} must be non-empty without NUL: {name!r}")
        encoded = name.encode("utf-8") + b"\0"
        if len(packed) + len(encoded) > 0xFFFF:
            raise ValueError(f"NRB name for {address} is too long ({len(encoded)} bytes)")
        if current and current_length + len(encoded) > 0xFFFF:
            records.append(_pack_nrb_record(record_type, packed, current))
            current, current_length = [], len(packed)
        current.append(encoded)
        current_length += len(encoded)
    if not current:
        raise ValueError(f"NRB entry for {address} has no names")
    records.append(_pack_nrb_record(record_type, packed, current))
    return records


def _pack_nrb_record(record_type: int, packed: bytes, names: list[bytes]) -> bytes:
    value = packed + b"".join(names)
    return _NRB_RECORD_HEADER.pack(record_type, len(value)) + value + _PADDING[len(value) & 3]


_NRB_END = _NRB_RECORD_HEADER.pack(NRB_RECORD_END, 0)


def name_resolution_blocks(
    entries: Iterable[tuple[str, Sequence[str]]],
    *,
    comment: str | None = None,
    max_block_bytes: int = DEFAULT_MAX_NRB_BYTES,
) -> list[bytes]:
    """NRBs mapping IP text to names; as many blocks as needed to stay under the size cap."""
    options = encode_options(BLOCK_NRB, comment=comment)
    fixed = 12 + len(_NRB_END) + len(options)
    blocks: list[bytes] = []
    records: list[bytes] = []
    size = fixed
    for address, names in entries:
        for record in _nrb_record(address, names):
            if records and size + len(record) > max_block_bytes:
                blocks.append(frame_block(BLOCK_NRB, b"".join(records) + _NRB_END + options))
                records, size = [], fixed
            records.append(record)
            size += len(record)
    if records or not blocks:
        blocks.append(frame_block(BLOCK_NRB, b"".join(records) + _NRB_END + options))
    return blocks


def name_resolution_block(
    entries: Iterable[tuple[str, Sequence[str]]],
    *,
    comment: str | None = None,
    max_block_bytes: int = DEFAULT_MAX_NRB_BYTES,
) -> bytes:
    """Encoded NRB(s): usually one block, several back to back for very long lists."""
    return b"".join(
        name_resolution_blocks(entries, comment=comment, max_block_bytes=max_block_bytes)
    )


def interface_statistics_block(
    interface_id: int,
    ts_units: int,
    *,
    received: int | None = None,
    dropped: int | None = None,
    os_dropped: int | None = None,
    filter_accepted: int | None = None,
    delivered: int | None = None,
    start_units: int | None = None,
    end_units: int | None = None,
    comment: str | None = None,
) -> bytes:
    """ISB; for tcpdump's end-of-capture counters (received / dropped by kernel / by filter)."""
    high, low = _split_u64(ts_units)
    return encode_block(
        BLOCK_ISB,
        (interface_id, high, low),
        comment=comment,
        start=start_units,
        end=end_units,
        received=received,
        dropped=dropped,
        filter_accepted=filter_accepted,
        os_dropped=os_dropped,
        delivered=delivered,
    )


def custom_block(pen: int, payload: bytes, *, copyable: bool = True) -> bytes:
    """Custom Block for private data; ``pen`` is the IANA Private Enterprise Number.

    The block has no payload length, so readers see the payload padded with NULs to 32 bits.
    tshark 4.0 lists custom blocks as extra frames: keep them out of capture output.
    """
    return encode_block(BLOCK_CUSTOM_COPYABLE if copyable else BLOCK_CUSTOM_LOCAL, (pen,), payload)


class PcapFeed(NamedTuple):
    """What ``PcapngPacketEncoder.feed_pcap`` did with one chunk."""

    packets: int  # records encoded
    data_bytes: int  # their captured bytes
    raw: bytes | memoryview  # the same records as raw pcap bytes (a view into the chunk)
    stop: Literal["packets", "bytes"] | None  # which limit ended the walk, if one did


class PcapngPacketEncoder:
    """Turns parsed pcap ``Packet``s into EPBs for one interface, a batch per ``bytes``.

    Each EPB is three parts (header, packet data as is, cached padding+trailer), joined once
    per batch, so packet data is copied exactly once.
    """

    __slots__ = ("interface_id", "_ticks_per_second", "_frac_scale", "_frac_divisor", "_tails")

    def __init__(
        self,
        interface_id: int,
        *,
        packet_nanosecond: bool,
        interface_nanosecond: bool | None = None,
    ) -> None:
        if interface_nanosecond is None:
            interface_nanosecond = packet_nanosecond
        self.interface_id = interface_id
        self._ticks_per_second = 1_000_000_000 if interface_nanosecond else 1_000_000
        self._frac_scale = 1000 if interface_nanosecond and not packet_nanosecond else 1
        self._frac_divisor = 1000 if packet_nanosecond and not interface_nanosecond else 1
        self._tails: dict[int, bytes] = {}

    def ts_units(self, packet: Packet) -> int:
        return (
            packet.ts_sec * self._ticks_per_second
            + packet.ts_frac * self._frac_scale // self._frac_divisor
        )

    def extend_parts(self, packets: Iterable[Packet], parts: list[bytes | memoryview]) -> int:
        """Append EPB pieces to ``parts`` (for one join across interfaces); return byte count."""
        pack_header = _EPB_HEADER.pack
        tails = self._tails
        append = parts.append
        interface_id = self.interface_id
        ticks = self._ticks_per_second
        scale = self._frac_scale
        divisor = self._frac_divisor
        exact = scale == 1 and divisor == 1
        written = 0
        for ts_sec, ts_frac, caplen, origlen, data in packets:
            total = 32 + ((caplen + 3) & ~3)
            units = ts_sec * ticks + (ts_frac if exact else ts_frac * scale // divisor)
            append(
                pack_header(
                    BLOCK_EPB,
                    total,
                    interface_id,
                    units >> 32,
                    units & 0xFFFF_FFFF,
                    caplen,
                    origlen,
                )
            )
            append(data)
            # Padding plus trailer depends on caplen only: cached, it costs a dict lookup.
            tail = tails.get(caplen)
            if tail is None:
                tail = self._tail_for_caplen(caplen, total)
            append(tail)
            written += total
        return written

    def feed_pcap(
        self,
        parser: PcapStreamParser,
        chunk: bytes | bytearray | memoryview,
        parts: list[bytes | memoryview],
        *,
        max_packets: int | None = None,
        max_bytes: int | None = None,
        overhead: int = 32,
    ) -> PcapFeed:
        """Feed a raw pcap chunk to ``parser`` and append the EPBs of its whole records.

        Fused for the capture hot path: one walk over the record headers, no ``Packet`` per
        record; packet data goes into ``parts`` as memoryview slices of the received bytes
        (joined once by the caller). The bytes equal ``extend_parts`` of ``parser.feed``.

        Limits as the pipeline applies them: at most ``max_packets`` records; stop before the
        record that would bring the running estimate (``overhead`` + caplen per record) over
        ``max_bytes``. Records after a limit are dropped, not kept pending.
        """
        taken = parser.take_chunk(chunk)
        if taken is None:
            return PcapFeed(0, 0, b"", None)
        data, first = taken
        if self._frac_scale != 1 or self._frac_divisor != 1:
            # Rescaled timestamps (never on the capture path): the general encoder.
            return self._feed_pcap_rescaled(parser, data, first, parts, max_packets, max_bytes,
                                            overhead)
        if max_packets is not None or max_bytes is not None:
            return self._feed_pcap_limited(parser, data, first, parts, max_packets, max_bytes,
                                           overhead)
        # Over 60 lines on purpose: the common case's record walk stays inline, without limit
        # checks or a call per record (~1 us per packet matters here). Its twin with the limits
        # checked is _feed_pcap_limited; a change to one belongs in the other.
        unpack = parser.record_struct.unpack_from
        max_caplen = parser.max_caplen
        assert max_caplen is not None
        pack_header = _EPB_HEADER.pack
        tails = self._tails
        append = parts.append
        interface_id = self.interface_id
        ticks = self._ticks_per_second
        view = memoryview(data)
        end = len(data)
        last = end - 16
        offset = first
        count = 0
        needed = 16
        while offset <= last:
            ts_sec, ts_frac, caplen, origlen = unpack(data, offset)
            if caplen > max_caplen:
                raise parser.bad_caplen(caplen, count)
            start = offset + 16
            offset = start + caplen
            if offset > end:
                offset = start - 16
                needed = 16 + caplen
                break
            units = ts_sec * ticks + ts_frac
            append(
                pack_header(
                    BLOCK_EPB,
                    32 + ((caplen + 3) & ~3),
                    interface_id,
                    units >> 32,
                    units & 0xFFFF_FFFF,
                    caplen,
                    origlen,
                )
            )
            append(view[start:offset])
            tail = tails.get(caplen)
            if tail is None:
                tail = self._tail_for_caplen(caplen, 32 + ((caplen + 3) & ~3))
            append(tail)
            count += 1
        parser.finish_chunk(data, first, offset, count, needed)
        return PcapFeed(count, offset - first - 16 * count, view[first:offset], None)

    def _feed_pcap_limited(
        self,
        parser: PcapStreamParser,
        data: bytes | bytearray | memoryview,
        first: int,
        parts: list[bytes | memoryview],
        max_packets: int | None,
        max_bytes: int | None,
        overhead: int,
    ) -> PcapFeed:
        """feed_pcap's walk with the packet and byte limits checked per record."""
        # Over 60 lines for the reason feed_pcap's walk is: the per-record work stays inline.
        unpack = parser.record_struct.unpack_from
        max_caplen = parser.max_caplen
        assert max_caplen is not None
        pack_header = _EPB_HEADER.pack
        tails = self._tails
        append = parts.append
        interface_id = self.interface_id
        ticks = self._ticks_per_second
        view = memoryview(data)
        end = len(data)
        last = end - 16
        offset = first
        count = 0
        needed = 16
        stop: Literal["packets", "bytes"] | None = None
        packets_left = -1 if max_packets is None else max_packets
        budget = max_bytes
        spent = 0
        while offset <= last:
            if count == packets_left:
                stop = "packets"
                break
            ts_sec, ts_frac, caplen, origlen = unpack(data, offset)
            if caplen > max_caplen:
                raise parser.bad_caplen(caplen, count)
            start = offset + 16
            if start + caplen > end:
                needed = 16 + caplen
                break
            if budget is not None:
                spent += overhead + caplen
                if spent > budget:
                    stop = "bytes"
                    break
            offset = start + caplen
            units = ts_sec * ticks + ts_frac
            total = 32 + ((caplen + 3) & ~3)
            append(
                pack_header(
                    BLOCK_EPB, total, interface_id, units >> 32, units & 0xFFFF_FFFF,
                    caplen, origlen,
                )
            )
            append(view[start:offset])
            tail = tails.get(caplen)
            if tail is None:
                tail = self._tail_for_caplen(caplen, total)
            append(tail)
            count += 1
        if stop is None and count == packets_left:
            stop = "packets"
        parser.finish_chunk(data, first, offset, count, needed)
        return PcapFeed(count, offset - first - 16 * count, view[first:offset], stop)

    def _feed_pcap_rescaled(
        self,
        parser: PcapStreamParser,
        data: bytes | bytearray | memoryview,
        first: int,
        parts: list[bytes | memoryview],
        max_packets: int | None,
        max_bytes: int | None,
        overhead: int,
    ) -> PcapFeed:
        unpack = parser.record_struct.unpack_from
        max_caplen = parser.max_caplen
        assert max_caplen is not None
        view = memoryview(data)
        end = len(data)
        offset = first
        packets: list[Packet] = []
        needed = 16
        stop: Literal["packets", "bytes"] | None = None
        spent = 0
        while end - offset >= 16:
            if max_packets is not None and len(packets) == max_packets:
                stop = "packets"
                break
            ts_sec, ts_frac, caplen, origlen = unpack(data, offset)
            if caplen > max_caplen:
                raise parser.bad_caplen(caplen, len(packets))
            start = offset + 16
            if start + caplen > end:
                needed = 16 + caplen
                break
            if max_bytes is not None:
                spent += overhead + caplen
                if spent > max_bytes:
                    stop = "bytes"
                    break
            offset = start + caplen
            packets.append(Packet(ts_sec, ts_frac, caplen, origlen, bytes(view[start:offset])))
        if stop is None and max_packets is not None and len(packets) == max_packets:
            stop = "packets"
        self.extend_parts(packets, parts)
        parser.finish_chunk(data, first, offset, len(packets), needed)
        return PcapFeed(len(packets), offset - first - 16 * len(packets), view[first:offset], stop)

    def _tail_for_caplen(self, caplen: int, total: int) -> bytes:
        if len(self._tails) > 4096:
            self._tails.clear()
        tail = self._tails[caplen] = _PADDING[caplen & 3] + _U32.pack(total)
        return tail

    def encode_batch(self, packets: Iterable[Packet]) -> bytes:
        parts: list[bytes | memoryview] = []
        self.extend_parts(packets, parts)
        return b"".join(parts)

    def encode(self, packet: Packet) -> bytes:
        return self.encode_batch((packet,))


# ---------------------------------------------------------------------------------------------
# Framing


class BlockFramer:
    """Cuts a pcapng byte stream into whole blocks: any chunking, either byte order, several
    sections. The one reader of block framing (type, length, trailer, section byte order).

    ``order`` None: the stream must start with a Section Header Block. Given, blocks before
    the first SHB are read in that order. ``order`` follows each SHB's byte-order magic.
    """

    __slots__ = ("order", "_pending", "_needed", "_position")

    def __init__(self, order: ByteOrder | None = None) -> None:
        self.order: ByteOrder | None = order
        self._pending = bytearray()
        self._needed = 12  # bytes the next block needs before it can be framed
        self._position = 0  # stream offset of the first byte not yet framed

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def feed(
        self, chunk: bytes | bytearray | memoryview, on_block: Callable[[int, memoryview], None]
    ) -> None:
        """Call ``on_block(block_type, whole block)`` for each block ``chunk`` completes.

        The view is only valid during the call; an incomplete last block stays pending.
        """
        pending = self._pending
        if pending or len(chunk) < self._needed:
            pending += chunk
            if len(pending) < self._needed:
                return
            data: bytes | bytearray | memoryview = bytes(pending)
            pending.clear()
        else:
            data = chunk
        end = len(data)
        offset = 0
        needed = 12
        order = self.order
        header = _BLOCK_HEADERS[order or "<"].unpack_from
        trailer_of = _TRAILERS[order or "<"].unpack_from
        with memoryview(data) as view:
            while end - offset >= 12:
                if view[offset : offset + 4] == SHB_TYPE_BYTES:
                    order = self._section_order(view, offset)
                    header = _BLOCK_HEADERS[order].unpack_from
                    trailer_of = _TRAILERS[order].unpack_from
                elif order is None:
                    raise PcapFormatError("pcapng stream does not start with a Section Header")
                block_type, length = header(view, offset)
                if length < 12 or length & 3 or length > MAX_BLOCK_LENGTH:
                    raise PcapFormatError(
                        f"pcapng block at byte {self._position + offset} has bad length {length}"
                    )
                if end - offset < length:
                    needed = length
                    break
                trailer = trailer_of(view, offset + length - 4)[0]
                if trailer != length:
                    raise PcapFormatError(
                        f"pcapng block at byte {self._position + offset}: trailer length "
                        f"{trailer} differs from header length {length}"
                    )
                on_block(block_type, view[offset : offset + length])
                offset += length
            if offset < end:
                pending += view[offset:]
        self._position += offset
        self._needed = needed

    def _section_order(self, view: memoryview, offset: int) -> ByteOrder:
        """The byte order the Section Header Block at ``offset`` sets."""
        magic = bytes(view[offset + 8 : offset + 12])
        order = BYTE_ORDER_MAGICS.get(magic)
        if order is None:
            raise PcapFormatError(
                f"pcapng section header at byte {self._position + offset} has "
                f"a bad byte-order magic {magic.hex()}"
            )
        self.order = order
        return order


# ---------------------------------------------------------------------------------------------
# Reader events


@dataclass(frozen=True, slots=True)
class SectionStart:
    format: Literal["pcap", "pcapng"]
    byte_order: ByteOrder
    version_major: int
    version_minor: int
    hardware: str | None = None
    os: str | None = None
    userappl: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Interface:
    id: int
    linktype: int
    snaplen: int
    name: str | None = None
    description: str | None = None
    tsresol: int = 1_000_000  # ticks per second
    os: str | None = None
    filter: str | None = None
    tsoffset: int = 0  # seconds added to every timestamp
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class NameRecords:
    records: tuple[tuple[str, tuple[str, ...]], ...]
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class PacketRecord:
    interface_id: int
    ts_ns: int
    caplen: int
    origlen: int
    data: bytes
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    interface_id: int
    ts_ns: int
    received: int | None = None
    dropped: int | None = None
    os_dropped: int | None = None
    filter_accepted: int | None = None
    delivered: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class CustomData:
    pen: int
    payload: bytes
    copyable: bool


CaptureEvent = SectionStart | Interface | NameRecords | PacketRecord | InterfaceStats | CustomData


# ---------------------------------------------------------------------------------------------
# Reader


def _text(value: bytes) -> str:
    # Some writers count a trailing NUL inside string options.
    return value.rstrip(b"\0").decode("utf-8", errors="replace")


def _tsresol_ticks(code: int) -> int:
    exponent = code & 0x7F
    return int((2 if code & 0x80 else 10) ** exponent)


def _tsresol_code(ticks: int) -> int:
    """The if_tsresol byte for a power of ten ticks per second (all we write)."""
    exponent = len(str(ticks)) - 1
    if ticks != 10**exponent:
        raise ValueError(f"if_tsresol of {ticks} ticks per second is not a power of ten")
    return exponent


def _units_to_ns(units: int, ticks_per_second: int, offset_seconds: int) -> int:
    if _NANOS_PER_SECOND % ticks_per_second == 0:
        ns = units * (_NANOS_PER_SECOND // ticks_per_second)
    else:
        ns = units * _NANOS_PER_SECOND // ticks_per_second
    return ns + offset_seconds * _NANOS_PER_SECOND


class _Section:
    """Byte order and interfaces of the current pcapng section."""

    __slots__ = ("order", "interfaces")

    def __init__(self, order: ByteOrder) -> None:
        self.order: ByteOrder = order
        self.interfaces: list[Interface] = []

    def ts_ns(self, interface_id: int, units: int) -> int:
        if interface_id < len(self.interfaces):
            interface = self.interfaces[interface_id]
            return _units_to_ns(units, interface.tsresol, interface.tsoffset)
        return _units_to_ns(units, 1_000_000, 0)


# ---------------------------------------------------------------------------------------------
# Block layouts: one table, read by the block encoders and by the reader


OptionKind = Literal["text", "filter", "u64", "i64", "ts", "tsresol"]
# Options as decoded: text, or a number (a timestamp option in raw if_tsresol units).
Options = dict[str, str | int]
_NO_OPTIONS: Options = {}  # shared, never written to
# Builds a block's event from its fixed fields, data and options.
BlockDecoder = Callable[["_Section", tuple[int, ...], memoryview, Options], "CaptureEvent"]


@dataclass(frozen=True, slots=True)
class OptionLayout:
    code: int
    name: str  # the encoder's keyword and the reader's key
    kind: OptionKind


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """One block type: fixed fields, what follows them, options, and the event it reads as."""

    fixed: str  # struct format of the fixed fields, byte order left out
    fields: tuple[str, ...]  # their names, for the reader of this table
    data: Literal["none", "caplen", "rest", "records"]  # after the fixed fields
    options: tuple[OptionLayout, ...]  # in the order the encoder writes them
    decode: BlockDecoder
    structs: dict[ByteOrder, struct.Struct] = field(init=False, repr=False)
    by_code: dict[int, OptionLayout] = field(init=False, repr=False)
    names: frozenset[str] = field(init=False, repr=False)
    size: int = field(init=False, repr=False)  # bytes of the fixed fields
    caplen_index: int = field(init=False, repr=False)  # of the "caplen" field, -1: none

    def __post_init__(self) -> None:
        structs = {order: struct.Struct(order + self.fixed) for order in ("<", ">")}
        if len(structs["<"].unpack(bytes(structs["<"].size))) != len(self.fields):
            raise AssertionError(f"layout {self.fixed!r} does not match {self.fields}")
        if (self.data == "caplen") != ("caplen" in self.fields):
            raise AssertionError(f"layout {self.fields}: caplen data needs a caplen field")
        object.__setattr__(self, "size", structs["<"].size)
        caplen_index = self.fields.index("caplen") if "caplen" in self.fields else -1
        object.__setattr__(self, "caplen_index", caplen_index)
        object.__setattr__(self, "structs", structs)
        object.__setattr__(self, "by_code", {option.code: option for option in self.options})
        object.__setattr__(self, "names", frozenset(option.name for option in self.options))


def _encode_option(option: OptionLayout, value: object) -> bytes:
    kind = option.kind
    if isinstance(value, str) and kind in ("text", "filter"):
        # Filter type 0 means "libpcap filter string".
        raw = value.encode("utf-8") if kind == "text" else b"\x00" + value.encode("utf-8")
    elif isinstance(value, int) and kind in ("u64", "i64"):
        raw = struct.pack("<Q" if kind == "u64" else "<q", value)
    elif isinstance(value, int) and kind == "ts":
        raw = struct.pack("<II", *_split_u64(value))
    elif isinstance(value, int) and kind == "tsresol":
        raw = bytes((_tsresol_code(value),))
    else:
        raise TypeError(f"pcapng option {option.name} ({kind}) cannot hold {value!r}")
    return _option(option.code, raw)


def _decode_option(kind: OptionKind, order: ByteOrder, value: bytes) -> str | int | None:
    """The option's value, None when it is too short to mean anything (then it is ignored)."""
    if kind == "text":
        return _text(value)
    if kind == "filter":
        if not value:
            return None
        return _text(value[1:]) if value[0] == 0 else value[1:].hex()
    if kind == "tsresol":
        return _tsresol_ticks(value[0]) if value else None
    if len(value) < 8:
        return None
    if kind == "ts":
        high, low = struct.unpack_from(order + "II", value, 0)
        return (int(high) << 32) | int(low)
    return int(struct.unpack_from(order + ("Q" if kind == "u64" else "q"), value, 0)[0])


def encode_options(block_type: int, **values: object) -> bytes:
    """The options field of a block: the given (not None) options in the table's order."""
    layout = BLOCK_LAYOUTS[block_type]
    if not values.keys() <= layout.names:
        unknown = sorted(values.keys() - layout.names)
        raise TypeError(f"pcapng block {block_type:#x} has no option {unknown}")
    body = b"".join(
        _encode_option(option, values[option.name])
        for option in layout.options
        if values.get(option.name) is not None
    )
    # A block without options has no options field at all, not a lone opt_endofopt.
    return body + _OPTION_HEADER.pack(OPT_ENDOFOPT, 0) if body else b""


def encode_block(
    block_type: int, fixed: tuple[int, ...], data: bytes = b"", **options: object
) -> bytes:
    """A whole little-endian block from its table layout: fixed fields, data, options."""
    layout = BLOCK_LAYOUTS[block_type]
    body = b"".join(
        (
            layout.structs["<"].pack(*fixed),
            data,
            _PADDING[len(data) & 3],
            encode_options(block_type, **options),
        )
    )
    return frame_block(block_type, body)


def decode_options(
    layout: BlockLayout, order: ByteOrder, body: memoryview, offset: int
) -> Options:
    """The options at ``body[offset:]`` the layout knows: text ones first seen wins, others last."""
    found: Options = {}
    by_code = layout.by_code
    unpack = _OPTION_HEADERS[order].unpack_from
    end = len(body)
    while end - offset >= 4:
        code, length = unpack(body, offset)
        if code == OPT_ENDOFOPT:
            break
        start = offset + 4
        offset = start + _pad4(length)
        option = by_code.get(code)
        if option is None or (option.kind == "text" and option.name in found):
            continue
        value = _decode_option(option.kind, order, bytes(body[start : start + length]))
        if value is not None:
            found[option.name] = value
    return found


def _str(options: Options, name: str) -> str | None:
    value = options.get(name)
    return value if isinstance(value, str) else None


def _int(options: Options, name: str) -> int | None:
    value = options.get(name)
    return value if isinstance(value, int) else None


def _section_start(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> SectionStart:
    _magic, major, minor, _section_length = fixed
    if major != 1:
        raise PcapFormatError(f"unsupported pcapng version {major}.{minor}")
    return SectionStart(
        "pcapng",
        section.order,
        major,
        minor,
        hardware=_str(options, "hardware"),
        os=_str(options, "os"),
        userappl=_str(options, "userappl"),
        comment=_str(options, "comment"),
    )


def _interface(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> Interface:
    linktype, _reserved, snaplen = fixed
    interface = Interface(
        len(section.interfaces),
        linktype,
        snaplen,
        name=_str(options, "name"),
        description=_str(options, "description"),
        tsresol=_int(options, "tsresol") or 1_000_000,
        os=_str(options, "os"),
        filter=_str(options, "filter"),
        tsoffset=_int(options, "tsoffset") or 0,
        comment=_str(options, "comment"),
    )
    section.interfaces.append(interface)
    return interface


def _packet(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> PacketRecord:
    # EPB and the obsolete PB end alike: ..., timestamp high, low, caplen, origlen.
    interface_id = fixed[0]
    high, low, caplen, origlen = fixed[-4:]
    return PacketRecord(
        interface_id,
        section.ts_ns(interface_id, (high << 32) | low),
        caplen,
        origlen,
        bytes(data),
        _str(options, "comment") if options else None,
    )


def _simple_packet(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> PacketRecord:
    (origlen,) = fixed
    snaplen = section.interfaces[0].snaplen if section.interfaces else 0
    caplen = min(origlen, len(data))
    if snaplen:
        caplen = min(caplen, snaplen)
    return PacketRecord(0, 0, caplen, origlen, bytes(data[:caplen]))


def _name_records(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> NameRecords:
    unpack = _OPTION_HEADERS[section.order].unpack_from  # records have the options' header
    records: list[tuple[str, tuple[str, ...]]] = []
    offset = 0
    end = len(data)
    while end - offset >= 4:
        record_type, length = unpack(data, offset)
        value = bytes(data[offset + 4 : offset + 4 + length])
        offset += 4 + _pad4(length)
        if record_type == NRB_RECORD_END:
            break
        address_length = 4 if record_type == NRB_RECORD_IPV4 else 16
        if record_type not in (NRB_RECORD_IPV4, NRB_RECORD_IPV6) or length < address_length:
            continue
        address = str(ipaddress.ip_address(value[:address_length]))
        names = tuple(_text(name) for name in value[address_length:].split(b"\0") if name)
        records.append((address, names))
    options = decode_options(BLOCK_LAYOUTS[BLOCK_NRB], section.order, data, offset)
    return NameRecords(tuple(records), _str(options, "comment"))


def _interface_stats(
    section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
) -> InterfaceStats:
    interface_id, high, low = fixed
    start, end = _int(options, "start"), _int(options, "end")
    return InterfaceStats(
        interface_id,
        section.ts_ns(interface_id, (high << 32) | low),
        received=_int(options, "received"),
        dropped=_int(options, "dropped"),
        os_dropped=_int(options, "os_dropped"),
        filter_accepted=_int(options, "filter_accepted"),
        delivered=_int(options, "delivered"),
        start_ns=None if start is None else section.ts_ns(interface_id, start),
        end_ns=None if end is None else section.ts_ns(interface_id, end),
        comment=_str(options, "comment"),
    )


def _custom(copyable: bool) -> BlockDecoder:
    def decode(
        section: _Section, fixed: tuple[int, ...], data: memoryview, options: Options
    ) -> CustomData:
        return CustomData(fixed[0], bytes(data), copyable)

    return decode


_COMMENT = OptionLayout(OPT_COMMENT, "comment", "text")
_CUSTOM_FIELDS = ("pen",)

BLOCK_LAYOUTS: dict[int, BlockLayout] = {
    BLOCK_SHB: BlockLayout(
        "IHHq",
        ("byte_order_magic", "major", "minor", "section_length"),
        "none",
        (
            _COMMENT,
            OptionLayout(SHB_HARDWARE, "hardware", "text"),
            OptionLayout(SHB_OS, "os", "text"),
            OptionLayout(SHB_USERAPPL, "userappl", "text"),
        ),
        _section_start,
    ),
    BLOCK_IDB: BlockLayout(
        "HHI",
        ("linktype", "reserved", "snaplen"),
        "none",
        (
            _COMMENT,
            OptionLayout(IF_NAME, "name", "text"),
            OptionLayout(IF_DESCRIPTION, "description", "text"),
            OptionLayout(IF_TSRESOL, "tsresol", "tsresol"),
            OptionLayout(IF_FILTER, "filter", "filter"),
            OptionLayout(IF_OS, "os", "text"),
            OptionLayout(IF_TSOFFSET, "tsoffset", "i64"),
        ),
        _interface,
    ),
    BLOCK_EPB: BlockLayout(
        "5I",
        ("interface_id", "ts_high", "ts_low", "caplen", "origlen"),
        "caplen",
        (_COMMENT,),
        _packet,
    ),
    BLOCK_PB_OBSOLETE: BlockLayout(
        "HHIIII",
        ("interface_id", "drops", "ts_high", "ts_low", "caplen", "origlen"),
        "caplen",
        (_COMMENT,),
        _packet,
    ),
    BLOCK_SPB: BlockLayout("I", ("origlen",), "rest", (), _simple_packet),
    # Records, then options: the decoder walks the records to find where options start.
    BLOCK_NRB: BlockLayout("", (), "records", (_COMMENT,), _name_records),
    BLOCK_ISB: BlockLayout(
        "III",
        ("interface_id", "ts_high", "ts_low"),
        "none",
        (
            _COMMENT,
            OptionLayout(ISB_STARTTIME, "start", "ts"),
            OptionLayout(ISB_ENDTIME, "end", "ts"),
            OptionLayout(ISB_IFRECV, "received", "u64"),
            OptionLayout(ISB_IFDROP, "dropped", "u64"),
            OptionLayout(ISB_FILTERACCEPT, "filter_accepted", "u64"),
            OptionLayout(ISB_OSDROP, "os_dropped", "u64"),
            OptionLayout(ISB_USRDELIV, "delivered", "u64"),
        ),
        _interface_stats,
    ),
    BLOCK_CUSTOM_COPYABLE: BlockLayout("I", _CUSTOM_FIELDS, "rest", (), _custom(True)),
    BLOCK_CUSTOM_LOCAL: BlockLayout("I", _CUSTOM_FIELDS, "rest", (), _custom(False)),
}
# The fused packet encoder's header: block type and length, then the table's EPB fields.
_EPB_HEADER = struct.Struct("<II" + BLOCK_LAYOUTS[BLOCK_EPB].fixed)


def decode_block(section: _Section, block_type: int, body: memoryview) -> CaptureEvent | None:
    """The event of one block's body (between length and trailer); None for unknown types."""
    layout = BLOCK_LAYOUTS.get(block_type)
    if layout is None:
        return None  # unknown block types are skipped, as the spec asks of readers
    fixed = layout.structs[section.order].unpack_from(body, 0)
    offset = layout.size
    if layout.caplen_index >= 0:
        caplen = fixed[layout.caplen_index]
        data = body[offset : offset + caplen]
        offset += (caplen + 3) & ~3
    else:
        data = body[offset:]
        if layout.data != "none":  # "rest", "records": to the end; no options follow
            offset = len(body)
    options = (
        decode_options(layout, section.order, body, offset)
        if len(body) > offset
        else _NO_OPTIONS
    )
    return layout.decode(section, fixed, data, options)


class CapturePushParser:
    """Push reader for pcap or pcapng (detected from the first bytes), any chunking.

    ``feed`` returns the events completed by the chunk; an incomplete trailing block or
    record stays pending and is never emitted.
    """

    def __init__(self) -> None:
        self.format: Literal["pcap", "pcapng"] | None = None
        self.bytes = 0
        self.packets = 0
        self._pending = bytearray()  # the first bytes, until they tell the format
        self._framer = BlockFramer()
        self._events: list[CaptureEvent] = []  # what the chunk being fed produced
        self._section: _Section | None = None
        self._pcap: PcapStreamParser | None = None
        self._pcap_interface: Interface | None = None

    @property
    def pending_bytes(self) -> int:
        if self._pcap is not None:
            return self._pcap.pending_bytes
        return len(self._pending) + self._framer.pending_bytes

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[CaptureEvent]:
        self.bytes += len(chunk)
        if self._pcap is not None:
            return self._feed_pcap(chunk)
        if self.format is None:
            self._pending += chunk
            if len(self._pending) < 4:
                return []
            head = bytes(self._pending[:4])
            buffered = bytes(self._pending)
            self._pending.clear()
            self.format = capture_format(head)
            if self.format == "pcapng":
                return self._feed_pcapng(buffered)
            if self.format == "pcap":
                self._pcap = PcapStreamParser()
                return self._feed_pcap(buffered)
            raise PcapFormatError(
                f"neither pcap nor pcapng: starts with {head.hex()}",
                hint="the first bytes may be an error message rather than a capture",
            )
        return self._feed_pcapng(chunk)

    def _feed_pcap(self, chunk: bytes | bytearray | memoryview) -> list[CaptureEvent]:
        parser = self._pcap
        assert parser is not None
        packets = parser.feed(chunk)
        events: list[CaptureEvent] = []
        header = parser.header
        if self._pcap_interface is None and header is not None:
            self._pcap_interface = Interface(
                0, header.linktype, header.snaplen, tsresol=header.ticks_per_second
            )
            events.append(
                SectionStart("pcap", header.byte_order, header.version_major, header.version_minor)
            )
            events.append(self._pcap_interface)
        if packets:
            assert header is not None
            nanosecond = header.nanosecond
            events.extend(
                PacketRecord(0, p.ts_ns(nanosecond), p.caplen, p.origlen, p.data) for p in packets
            )
            self.packets += len(packets)
        return events

    def _feed_pcapng(self, chunk: bytes | bytearray | memoryview) -> list[CaptureEvent]:
        events: list[CaptureEvent] = []
        self._events = events
        self._framer.feed(chunk, self._on_block)
        return events

    def _on_block(self, block_type: int, block: memoryview) -> None:
        if block_type == BLOCK_SHB:
            assert self._framer.order is not None
            self._section = _Section(self._framer.order)
        section = self._section
        assert section is not None  # the framer refuses a stream that does not start with one
        event = decode_block(section, block_type, block[8:-4])
        if event is not None:
            self._events.append(event)
            if block_type in PACKET_BLOCK_TYPES:
                self.packets += 1


def read_capture(
    source: bytes | bytearray | memoryview | BinaryIO | str | os.PathLike[str],
    *,
    chunk_size: int = 256 * 1024,
    allow_truncated: bool = True,
    tail: list[int] | None = None,
) -> Iterator[CaptureEvent]:
    """Events of a pcap or pcapng file, stream or buffer, in file order.

    A tail cut inside a block is dropped (like tshark and capinfos do) unless
    ``allow_truncated`` is False, which raises ``PcapFormatError`` instead. ``tail``, when
    given, receives the number of bytes so dropped (0: the file ends on a whole block).
    """
    parser = CapturePushParser()
    if isinstance(source, bytes | bytearray | memoryview):
        yield from parser.feed(source)
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield from _read_stream(parser, stream, chunk_size)
    else:
        yield from _read_stream(parser, source, chunk_size)
    if tail is not None:
        tail.append(parser.pending_bytes)
    if parser.pending_bytes and not allow_truncated:
        raise PcapFormatError(
            f"capture ends inside a block: {parser.pending_bytes} trailing bytes",
        )


def truncated_bytes(path: str | os.PathLike[str]) -> int:
    """How many bytes at the end of a capture file are cut inside a block (0: none)."""
    tail: list[int] = []
    for _ in read_capture(path, tail=tail):
        pass
    return tail[0] if tail else 0


def _read_stream(
    parser: CapturePushParser, stream: BinaryIO, chunk_size: int
) -> Iterator[CaptureEvent]:
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            return
        yield from parser.feed(chunk)
