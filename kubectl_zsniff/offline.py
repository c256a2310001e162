"""Offline work on saved captures and logs: names into a pcapng, hosts files, names read back.

Pure over files: no cluster access here (the caller passes the names it loaded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kubectl_zsniff import __version__
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.hosts import hosts_file_text
from kubectl_zsniff.formats.pcap import PcapFormatError
from kubectl_zsniff.formats.pcapng import (
    CaptureEvent,
    Interface,
    NameRecords,
    PacketRecord,
    SectionStart,
    enhanced_packet_block,
    interface_description_block,
    name_resolution_block,
    read_capture,
    section_header_block,
)
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.names.map import PodName, normalize_ip
from kubectl_zsniff.sinks.file import open_output, open_private


@dataclass
class ConvertSummary:
    packets: int
    interfaces: int
    names: int
    kept_names: int
    truncated_bytes: int = 0  # the source ended inside a packet: this many bytes were dropped


def convert_capture(
    source: Path,
    destination: Path,
    names: Mapping[str, str],
    comment: str,
) -> ConvertSummary:
    """Rewrite any pcap/pcapng as a pcapng whose first blocks name the cluster's addresses.

    Interfaces (and their names) and name records already in the file are kept; several
    sections become one, so every packet sees the names.
    """
    if source.resolve() == destination.resolve():
        raise ZsniffError(
            "the output would overwrite the input", "write to another file", ExitStatus.USAGE
        )
    if not source.exists():
        raise ZsniffError(f"{source}: no such file", "check the path of the capture to convert",
                          ExitStatus.USAGE)
    output, created = open_output(destination)
    try:
        tail: list[int] = []
        events = read_capture(str(source), tail=tail)
        with output as out:
            out.write(section_header_block(comment, userappl=f"kubectl-zsniff {__version__}"))
            entries = sorted((ip, [name]) for ip, name in names.items())
            if entries:
                out.write(name_resolution_block(entries))
            copied = _copy_capture(events, out, source.name)
    except PcapFormatError as exc:
        if created:  # a half-written file of ours is not left behind; one that was there stays
            with contextlib.suppress(OSError):
                destination.unlink()
        raise ZsniffError(
            f"{source} is not a pcap or pcapng capture: {exc.message}",
            "give a file written by zsniff, ksniff, tcpdump -w, tshark -w or Wireshark",
            ExitStatus.USAGE,
        ) from exc
    return ConvertSummary(copied.packets, len(copied.interfaces), len(names),
                          copied.kept_names, tail[0] if tail else 0)


@dataclass
class _Copied:
    packets: int = 0
    kept_names: int = 0
    # (section, interface id in it) -> the interface's id in the one output section
    interfaces: dict[tuple[int, int], int] = field(default_factory=dict)


def _copy_capture(events: Iterable[CaptureEvent], out: BinaryIO, source_name: str) -> _Copied:
    """Every section's interfaces, names and packets into one section."""
    copied = _Copied()
    interfaces = copied.interfaces
    section = -1
    for event in events:
        if isinstance(event, SectionStart):
            section += 1
        elif isinstance(event, Interface):
            interfaces[(section, event.id)] = len(interfaces)
            out.write(_interface(event, source_name, len(interfaces) - 1))
        elif isinstance(event, NameRecords):
            # The file's own names come after the cluster's: a reader applies the later
            # record, and the file knew its packets better than today's cluster.
            records = [(ip, list(n)) for ip, n in event.records if n]
            if records:
                out.write(name_resolution_block(records))
                copied.kept_names += len(records)
        elif isinstance(event, PacketRecord):
            new_id = interfaces.get((section, event.interface_id))
            if new_id is None:
                continue
            out.write(enhanced_packet_block(
                new_id, event.ts_ns, event.caplen, event.origlen, event.data, event.comment,
            ))
            copied.packets += 1
    return copied


def _interface(event: Interface, source_name: str, new_id: int) -> bytes:
    # Timestamps are rewritten in nanoseconds whatever the input's resolution.
    return interface_description_block(
        event.linktype,
        event.snaplen,
        name=event.name or f"{source_name}#{new_id}",
        description=event.description,
        tsresol_nanos=True,
        os=event.os,
        filter=event.filter,
        comment=event.comment,
    )


def write_text_private(path: Path, text: str, flag: str = "-o") -> None:
    """Write a text file, owner-only when new; errors name the `flag` that gave the path."""
    with open_private(path, flag=flag) as out:
        out.write(text.encode("utf-8"))


def names_from_capture(path: Path) -> NameBook:
    """The names a zsniff pcapng carries, each valid from the packet after its NRB on.

    So a log line is named as the capture named its packets at that time, reused addresses
    included. Names written before the first packet hold from the start.
    """
    book = NameBook(history=None)  # the file's times, and the whole of them: keep every name
    pending: list[tuple[str, str]] = []
    seen_packet = False
    last_ts = 0.0
    try:
        for event in read_capture(str(path)):
            if isinstance(event, NameRecords):
                records = [(ip, names[0]) for ip, names in event.records if names]
                if seen_packet:
                    pending += records
                else:  # names written before any packet hold from the start
                    for ip, name in records:
                        book.record(ip, _parse_name(name), 0.0)
            elif isinstance(event, PacketRecord):
                seen_packet = True
                last_ts = event.ts_ns / 1e9
                for ip, name in pending:  # a mid-stream NRB applies from the next packet on
                    book.record(ip, _parse_name(name), last_ts)
                pending = []
    except FileNotFoundError as exc:
        raise ZsniffError(f"{path}: no such file", "check the path given to --names-from",
                          ExitStatus.USAGE) from exc
    except PcapFormatError as exc:
        raise ZsniffError(
            f"{path} is not a capture: {exc.message}",
            "give a zsniff pcapng or a hosts file (IP NAME per line)", ExitStatus.USAGE
        ) from exc
    for ip, name in pending:
        book.record(ip, _parse_name(name), last_ts)
    return book


def _parse_name(text: str) -> PodName | None:
    if normalize_ip(text) is not None:
        return None  # an address zsniff renamed to itself: released, owner unknown
    try:
        return PodName.parse(text)
    except ValueError:  # a name written by another tool
        return PodName(text, None, "pod", None)


__all__ = [
    "ConvertSummary",
    "convert_capture",
    "hosts_file_text",
    "names_from_capture",
    "write_text_private",
]
