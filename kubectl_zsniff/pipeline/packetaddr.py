"""Source and destination IP addresses of a captured frame, for the link types tcpdump writes."""

from __future__ import annotations

import ipaddress

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = {12, 14, LINKTYPE_RAW}  # DLT_RAW's historical numbers on some systems

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_VLAN_TAGS = {0x8100, 0x88A8, 0x9100}


def _network_offset(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype) or None when the frame carries no IP."""
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
        while ethertype in _VLAN_TAGS and len(frame) >= offset + 4:
            ethertype = int.from_bytes(frame[offset + 2 : offset + 4], "big")
            offset += 4
        return offset, ethertype
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20, int.from_bytes(frame[0:2], "big") if len(frame) >= 2 else 0
    if linktype == LINKTYPE_LINUX_SLL:
        return 16, int.from_bytes(frame[14:16], "big") if len(frame) >= 16 else 0
    if linktype in _RAW_ALIASES:
        version = frame[0] >> 4 if frame else 0
        return 0, _ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6 if version == 6 else 0
    if linktype == LINKTYPE_NULL and len(frame) >= 4:
        version = frame[4] >> 4 if len(frame) > 4 else 0
        return 4, _ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6 if version == 6 else 0
    return None


def network_offset(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype) or None when the frame carries no IP."""
    return _network_offset(linktype, frame)


def ip_addresses(linktype: int, frame: bytes) -> tuple[str, str] | None:
    """(source, destination) as text, or None for non-IP or truncated frames."""
    located = _network_offset(linktype, frame)
    if located is None:
        return None
    offset, ethertype = located
    if ethertype == _ETHERTYPE_IPV4 and len(frame) >= offset + 20:
        return (
            str(ipaddress.IPv4Address(frame[offset + 12 : offset + 16])),
            str(ipaddress.IPv4Address(frame[offset + 16 : offset + 20])),
        )
    if ethertype == _ETHERTYPE_IPV6 and len(frame) >= offset + 40:
        return (
            str(ipaddress.IPv6Address(frame[offset + 8 : offset + 24])),
            str(ipaddress.IPv6Address(frame[offset + 24 : offset + 40])),
        )
    return None
