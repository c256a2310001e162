"""pcapng (draft-ietf-opsawg-pcapng): block encoders, a fast packet encoder, and a reader.

Everything is written little-endian; the Section Header Block's byte-order magic tells readers,
so that is valid on any host. The reader accepts both byte orders, several sections, and
classic pcap too, so offline tools need one entry point.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, NamedTuple

from .detect import (
    BLOCK_SHB,
    BYTE_ORDER_MAGIC,
    BYTE_ORDER_MAGICS,
    SHB_TYPE_BYTES,
    ByteOrder,
    capture_format,
)
from .pcap import Packet, PcapFormatError, PcapStreamParser

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
_U64 = struct.Struct("<Q")
_OPTION_HEADER = struct.Struct("<HH")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_EPB_HEADER = struct.Struct("<7I")
_ISB_BODY = struct.Struct("<III")
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


def _text_option(code: int, text: str | None) -> bytes:
    return b"" if text is None else _option(code, text.encode("utf-8"))


def _options(*encoded: bytes) -> bytes:
    # A block without options has no options field at all, not a lone opt_endofopt.
    body = b"".join(encoded)
    return body + _OPTION_HEADER.pack(OPT_ENDOFOPT, 0) if body else b""


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
    body = _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + _options(
        _text_option(OPT_COMMENT, comment),
        _text_option(SHB_HARDWARE, hardware),
        _text_option(SHB_OS, os),
        _text_option(SHB_USERAPPL, userappl),
    )
    return frame_block(BLOCK_SHB, body)


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
    body = _IDB_BODY.pack(linktype, 0, snaplen) + _options(
        _text_option(OPT_COMMENT, comment),
        _text_option(IF_NAME, name),
        _text_option(IF_DESCRIPTION, description),
        _option(IF_TSRESOL, b"\x09") if tsresol_nanos else b"",
        # Filter type 0 means "libpcap filter string".
        b"" if filter is None else _option(IF_FILTER, b"\x00" + filter.encode("utf-8")),
        _text_option(IF_OS, os),
    )
    return frame_block(BLOCK_IDB, body)


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
    options = _options(_text_option(OPT_COMMENT, comment))
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
    options = _options(_text_option(OPT_COMMENT, comment))
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

    def counter(code: int, value: int | None) -> bytes:
        return b"" if value is None else _option(code, _U64.pack(value))

    def timestamp(code: int, units: int | None) -> bytes:
        if units is None:
            return b""
        high, low = _split_u64(units)
        return _option(code, struct.pack("<II", high, low))

    high, low = _split_u64(ts_units)
    body = _ISB_BODY.pack(interface_id, high, low) + _options(
        _text_option(OPT_COMMENT, comment),
        timestamp(ISB_STARTTIME, start_units),
        timestamp(ISB_ENDTIME, end_units),
        counter(ISB_IFRECV, received),
        counter(ISB_IFDROP, dropped),
        counter(ISB_FILTERACCEPT, filter_accepted),
        counter(ISB_OSDROP, os_dropped),
        counter(ISB_USRDELIV, delivered),
    )
    return frame_block(BLOCK_ISB, body)


def custom_block(pen: int, payload: bytes, *, copyable: bool = True) -> bytes:
    """Custom Block for private data; ``pen`` is the IANA Private Enterprise Number.

    The block has no payload length, so readers see the payload padded with NULs to 32 bits.
    tshark 4.0 lists custom blocks as extra frames: keep them out of capture output.
    """
    body = _U32.pack(pen) + payload + _PADDING[len(payload) & 3]
    return frame_block(BLOCK_CUSTOM_COPYABLE if copyable else BLOCK_CUSTOM_LOCAL, body)


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
        if max_packets is None and max_bytes is None:
            # The common case gets a loop without limit checks: ~1 us per packet matters here.
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
        else:
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
        with memoryview(data) as view:
            while end - offset >= 12:
                order = self._block_order(view, offset)
                block_type, length = _BLOCK_HEADERS[order].unpack_from(view, offset)
                if length < 12 or length & 3 or length > MAX_BLOCK_LENGTH:
                    raise PcapFormatError(
                        f"pcapng block at byte {self._position + offset} has bad length {length}"
                    )
                if end - offset < length:
                    needed = length
                    break
                trailer = _TRAILERS[order].unpack_from(view, offset + length - 4)[0]
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

    def _block_order(self, view: memoryview, offset: int) -> ByteOrder:
        """The byte order of the block at ``offset``: a Section Header sets a new one."""
        if view[offset : offset + 4] == SHB_TYPE_BYTES:
            magic = bytes(view[offset + 8 : offset + 12])
            order = BYTE_ORDER_MAGICS.get(magic)
            if order is None:
                raise PcapFormatError(
                    f"pcapng section header at byte {self._position + offset} has "
                    f"a bad byte-order magic {magic.hex()}"
                )
            self.order = order
        elif self.order is None:
            raise PcapFormatError("pcapng stream does not start with a Section Header")
        return self.order


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
    return (2 if code & 0x80 else 10) ** exponent


def _units_to_ns(units: int, ticks_per_second: int, offset_seconds: int) -> int:
    if _NANOS_PER_SECOND % ticks_per_second == 0:
        ns = units * (_NANOS_PER_SECOND // ticks_per_second)
    else:
        ns = units * _NANOS_PER_SECOND // ticks_per_second
    return ns + offset_seconds * _NANOS_PER_SECOND


class _Section:
    """Byte order and interfaces of the current pcapng section."""

    __slots__ = ("order", "u32", "interfaces", "epb", "option_header")

    def __init__(self, order: ByteOrder) -> None:
        self.order: ByteOrder = order
        self.u32 = struct.Struct(order + "I")
        self.option_header = struct.Struct(order + "HH")
        self.epb = struct.Struct(order + "5I")
        self.interfaces: list[Interface] = []


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
        event = self._decode_block(section, block_type, block[8:-4])
        if event is not None:
            self._events.append(event)

    def _options(self, section: _Section, body: memoryview, offset: int) -> list[tuple[int, bytes]]:
        options: list[tuple[int, bytes]] = []
        unpack = section.option_header.unpack_from
        end = len(body)
        while end - offset >= 4:
            code, length = unpack(body, offset)
            if code == OPT_ENDOFOPT:
                break
            start = offset + 4
            options.append((code, bytes(body[start : start + length])))
            offset = start + _pad4(length)
        return options

    def _decode_block(
        self, section: _Section, block_type: int, body: memoryview
    ) -> CaptureEvent | None:
        order = section.order
        if block_type == BLOCK_EPB:
            interface_id, high, low, caplen, origlen = section.epb.unpack_from(body, 0)
            data = bytes(body[20 : 20 + caplen])
            comment = None
            if len(body) > 20 + _pad4(caplen):
                comment = self._comment(self._options(section, body, 20 + _pad4(caplen)))
            self.packets += 1
            return PacketRecord(
                interface_id,
                self._ts_ns(section, interface_id, (high << 32) | low),
                caplen,
                origlen,
                data,
                comment,
            )
        if block_type == BLOCK_SPB:
            origlen = section.u32.unpack_from(body, 0)[0]
            snaplen = section.interfaces[0].snaplen if section.interfaces else 0
            caplen = min(origlen, len(body) - 4)
            if snaplen:
                caplen = min(caplen, snaplen)
            self.packets += 1
            return PacketRecord(0, 0, caplen, origlen, bytes(body[4 : 4 + caplen]))
        if block_type == BLOCK_PB_OBSOLETE:
            interface_id, _drops, high, low, caplen, origlen = struct.unpack_from(
                order + "HHIIII", body, 0
            )
            data = bytes(body[20 : 20 + caplen])
            comment = self._comment(self._options(section, body, 20 + _pad4(caplen)))
            self.packets += 1
            return PacketRecord(
                interface_id,
                self._ts_ns(section, interface_id, (high << 32) | low),
                caplen,
                origlen,
                data,
                comment,
            )
        if block_type == BLOCK_SHB:
            _magic, major, minor, _section_length = struct.unpack_from(order + "IHHq", body, 0)
            if major != 1:
                raise PcapFormatError(f"unsupported pcapng version {major}.{minor}")
            opts = self._options(section, body, 16)
            return SectionStart(
                "pcapng",
                order,
                major,
                minor,
                hardware=self._first_text(opts, SHB_HARDWARE),
                os=self._first_text(opts, SHB_OS),
                userappl=self._first_text(opts, SHB_USERAPPL),
                comment=self._comment(opts),
            )
        if block_type == BLOCK_IDB:
            linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body, 0)
            opts = self._options(section, body, 8)
            tsresol = 1_000_000
            tsoffset = 0
            filter_text = None
            for code, value in opts:
                if code == IF_TSRESOL and value:
                    tsresol = _tsresol_ticks(value[0])
                elif code == IF_TSOFFSET and len(value) >= 8:
                    tsoffset = struct.unpack_from(order + "q", value, 0)[0]
                elif code == IF_FILTER and value:
                    filter_text = _text(value[1:]) if value[0] == 0 else value[1:].hex()
            interface = Interface(
                len(section.interfaces),
                linktype,
                snaplen,
                name=self._first_text(opts, IF_NAME),
                description=self._first_text(opts, IF_DESCRIPTION),
                tsresol=tsresol,
                os=self._first_text(opts, IF_OS),
                filter=filter_text,
                tsoffset=tsoffset,
                comment=self._comment(opts),
            )
            section.interfaces.append(interface)
            return interface
        if block_type == BLOCK_NRB:
            return self._decode_nrb(section, body)
        if block_type == BLOCK_ISB:
            interface_id, high, low = struct.unpack_from(order + "III", body, 0)
            opts = self._options(section, body, 12)
            counters: dict[int, int] = {}
            stamps: dict[int, int] = {}
            for code, value in opts:
                if code in (ISB_STARTTIME, ISB_ENDTIME) and len(value) >= 8:
                    t_high, t_low = struct.unpack_from(order + "II", value, 0)
                    stamps[code] = self._ts_ns(section, interface_id, (t_high << 32) | t_low)
                elif ISB_IFRECV <= code <= ISB_USRDELIV and len(value) >= 8:
                    counters[code] = struct.unpack_from(order + "Q", value, 0)[0]
            return InterfaceStats(
                interface_id,
                self._ts_ns(section, interface_id, (high << 32) | low),
                received=counters.get(ISB_IFRECV),
                dropped=counters.get(ISB_IFDROP),
                os_dropped=counters.get(ISB_OSDROP),
                filter_accepted=counters.get(ISB_FILTERACCEPT),
                delivered=counters.get(ISB_USRDELIV),
                start_ns=stamps.get(ISB_STARTTIME),
                end_ns=stamps.get(ISB_ENDTIME),
                comment=self._comment(opts),
            )
        if block_type in (BLOCK_CUSTOM_COPYABLE, BLOCK_CUSTOM_LOCAL):
            pen = section.u32.unpack_from(body, 0)[0]
            return CustomData(pen, bytes(body[4:]), block_type == BLOCK_CUSTOM_COPYABLE)
        return None  # unknown block types are skipped, as the spec asks of readers

    def _decode_nrb(self, section: _Section, body: memoryview) -> NameRecords:
        unpack = section.option_header.unpack_from
        records: list[tuple[str, tuple[str, ...]]] = []
        offset = 0
        end = len(body)
        while end - offset >= 4:
            record_type, length = unpack(body, offset)
            value = bytes(body[offset + 4 : offset + 4 + length])
            offset += 4 + _pad4(length)
            if record_type == NRB_RECORD_END:
                break
            address_length = 4 if record_type == NRB_RECORD_IPV4 else 16
            if record_type not in (NRB_RECORD_IPV4, NRB_RECORD_IPV6) or length < address_length:
                continue
            address = str(ipaddress.ip_address(value[:address_length]))
            names = tuple(_text(name) for name in value[address_length:].split(b"\0") if name)
            records.append((address, names))
        comment = self._comment(self._options(section, body, offset))
        return NameRecords(tuple(records), comment)

    @staticmethod
    def _first_text(options: list[tuple[int, bytes]], code: int) -> str | None:
        for option_code, value in options:
            if option_code == code:
                return _text(value)
        return None

    def _comment(self, options: list[tuple[int, bytes]]) -> str | None:
        return self._first_text(options, OPT_COMMENT)

    @staticmethod
    def _ts_ns(section: _Section, interface_id: int, units: int) -> int:
        if interface_id < len(section.interfaces):
            interface = section.interfaces[interface_id]
            return _units_to_ns(units, interface.tsresol, interface.tsoffset)
        return _units_to_ns(units, 1_000_000, 0)


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
