"""The names one capture has stated in its pcapng, and the blocks that keep them true.

Name Resolution Blocks go before the packets that need them: the table known at the start,
a joining pod's own addresses, and every change the name watch reports. An address whose owner
changed within the capture is "re-owned": its packets then carry the owner at capture time as
a comment too (see ``owner_commented``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kubectl_zsniff.formats.pcap import Packet
from kubectl_zsniff.formats.pcapng import (
    PcapngPacketEncoder,
    enhanced_packet_block,
    name_resolution_block,
)
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.pipeline.packetaddr import ip_addresses


class StatedNames:
    def __init__(self, book: NameBook | None) -> None:
        self.book = book
        self.named: dict[str, str] = {}  # address -> the name the capture gives it now
        self.reowned: dict[str, str] = {}  # addresses whose owner changed within it
        self.written = 0  # name records written, for the summary

    def opening(self, pods: Sequence[PodInfo]) -> bytes:
        """The NRB of every name known at the start (b"" when none)."""
        table: dict[str, str] = {}
        if self.book is not None:
            table.update({ip: owner.name for ip, owner in self.book.current().items()})
            self.book.drain_changes()
        # The captured pods are always named, even when listing pods was not allowed.
        for pod in pods:
            for ip in pod.pod_ips:
                table.setdefault(ip, pod.title)
        self.named.update(table)
        if not table:
            return b""
        self.written += len(table)
        return name_resolution_block([(ip, [name]) for ip, name in sorted(table.items())])

    def table(self) -> bytes:
        """One NRB with every name stated so far, for a file that must stand alone."""
        entries = [(ip, [name]) for ip, name in sorted(self.named.items())]
        return name_resolution_block(entries) if entries else b""

    def fresh_file(self) -> None:
        """A new file names each address once, as it is now: an address released since (named
        itself) needs no name there, and none has changed owner in it yet. So over hours of
        pods coming and going this holds the addresses that have an owner, not every one the
        capture saw, and each file's name table stays as large as the cluster. Only when the
        files are the one pcapng output: a live Wireshark beside them reads one stream, whose
        history (a reused address's comment) this would cut short."""
        self.named = {ip: name for ip, name in self.named.items() if name != ip}
        self.reowned.clear()

    def for_pod(self, pod: PodInfo) -> bytes:
        """An NRB for a pod's own addresses when the capture does not name them so yet: a pod
        that joined later may be newer than what the name watch has told."""
        name = pod.title
        entries = [(ip, [name]) for ip in pod.pod_ips if self.named.get(ip) != name]
        if not entries:
            return b""
        for ip, _ in entries:
            if ip in self.named:
                self.reowned[ip] = name
            self.named[ip] = name
        self.written += len(entries)
        return name_resolution_block(entries)

    def updates(self) -> bytes:
        """An NRB for addresses that appeared or changed owner since the last packets."""
        if self.book is None:
            return b""
        entries: list[tuple[str, list[str]]] = []
        for change in self.book.drain_changes():
            ip = change.ip
            previous = self.named.get(ip)
            # A released address is renamed to itself so that a new, not yet known owner's
            # packets never show the old pod's name.
            name = change.name.name if change.name is not None else ip
            if previous == name or (previous is None and change.name is None):
                continue
            if previous is not None:
                self.reowned[ip] = name
            self.named[ip] = name
            entries.append((ip, [name]))
        if not entries:
            return b""
        self.written += len(entries)
        return name_resolution_block(entries)

    def owner_commented(self, encoder: PcapngPacketEncoder, linktype: int,
                        packets: Sequence[Packet], parts: list[bytes | memoryview]) -> None:
        """EPBs of `packets` into `parts`; one touching a re-owned address carries its owner
        at capture time as a comment.

        One-pass readers (tshark, a live Wireshark) already apply each NRB from where it
        stands; a two-pass reader (Wireshark opening the file) keeps one name per address,
        the last: the comment keeps the truth visible there.
        """
        reowned = self.reowned
        plain: list[Packet] = []
        for packet in packets:
            addresses = ip_addresses(linktype, packet.data)
            touched = [ip for ip in addresses or () if ip in reowned]
            if not touched:
                plain.append(packet)
                continue
            if plain:
                encoder.extend_parts(plain, parts)
                plain = []
            comment = "; ".join(
                f"zsniff: {ip} was {reowned[ip]} at capture time" for ip in dict.fromkeys(touched)
            )
            parts.append(
                enhanced_packet_block(
                    encoder.interface_id, encoder.ts_units(packet), packet.caplen,
                    packet.origlen, packet.data, comment,
                )
            )
        if plain:
            encoder.extend_parts(plain, parts)
