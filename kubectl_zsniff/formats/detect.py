"""Capture-file detection: the magics that start pcap and pcapng, and telling them apart.

The one definition of each magic, of the pcap global header's length and of ``ByteOrder``;
pcap.py and pcapng.py build on these.
"""

from __future__ import annotations

import struct
from typing import Literal

ByteOrder = Literal["<", ">"]
CaptureFormat = Literal["pcap", "pcapng"]

MAGIC_MICROSECONDS = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
BLOCK_SHB = 0x0A0D0D0A  # pcapng Section Header Block type: a palindrome, the same in both orders
BYTE_ORDER_MAGIC = 0x1A2B3C4D  # in the SHB: tells the section's byte order
PCAP_HEADER_LENGTH = 24

SHB_TYPE_BYTES = struct.pack("<I", BLOCK_SHB)
# The four classic pcap magics as they appear on disk: (byte order, nanosecond timestamps).
PCAP_MAGICS: dict[bytes, tuple[ByteOrder, bool]] = {
    struct.pack("<I", MAGIC_MICROSECONDS): ("<", False),
    struct.pack(">I", MAGIC_MICROSECONDS): (">", False),
    struct.pack("<I", MAGIC_NANOSECONDS): ("<", True),
    struct.pack(">I", MAGIC_NANOSECONDS): (">", True),
}
BYTE_ORDER_MAGICS: dict[bytes, ByteOrder] = {
    struct.pack("<I", BYTE_ORDER_MAGIC): "<",
    struct.pack(">I", BYTE_ORDER_MAGIC): ">",
}


def capture_format(head: bytes | bytearray | memoryview) -> CaptureFormat | None:
    """"pcap" or "pcapng" from a file's first 4 bytes; None when they are neither."""
    magic = bytes(head[:4])
    if magic == SHB_TYPE_BYTES:
        return "pcapng"
    if magic in PCAP_MAGICS:
        return "pcap"
    return None
