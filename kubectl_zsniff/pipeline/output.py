"""From tcpdump's pcap streams (one lane per pod) to the bytes each sink wants.

Every write is whole pcap records or whole pcapng blocks, so an output cut anywhere still ends on
a packet boundary. pcapng gets one section: a header with a comment, one named interface per pod
(written when that pod's stream starts), and Name Resolution Blocks before the packets that need
them. pcap sinks get tcpdump's own bytes (several pods: one header, records interleaved).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from enum import Enum
from typing import Any

from kubectl_zsniff import __version__
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.detect import PCAP_HEADER_LENGTH
from kubectl_zsniff.formats.pcap import Packet, PcapHeader, PcapStreamParser
from kubectl_zsniff.formats.pcapng import (
    PcapngPacketEncoder,
    enhanced_packet_block,
    interface_description_block,
    name_resolution_block,
    section_header_block,
)
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
from kubectl_zsniff.pipeline.dedup import DEFAULT_WINDOW_NS as DEDUP_WINDOW_NS
from kubectl_zsniff.pipeline.dedup import Deduplicator, packet_key
from kubectl_zsniff.pipeline.merge import DEFAULT_WINDOW_NS, ReorderWindow
from kubectl_zsniff.pipeline.packetaddr import ip_addresses
from kubectl_zsniff.sinks import ReaderClosed, ReaderStalled, Sink
from kubectl_zsniff.words import plural


class StopReason(str, Enum):
    FINISHED = "tcpdump finished"
    PACKET_LIMIT = "packet limit reached"
    DURATION = "duration reached"
    SIZE_LIMIT = "size limit reached"
    INTERRUPTED = "interrupted (Ctrl-C)"
    TERMINATED = "terminated (SIGTERM)"
    READER_CLOSED = "the reader went away"
    STREAM_LOST = "the connection was lost"
    OUTPUT_FAILED = "writing the output failed"


class Lane:
    """One pod's tcpdump stream into the shared pipeline."""

    def __init__(self, pipeline: OutputPipeline, pod: PodInfo, container: str) -> None:
        self.pipeline = pipeline
        self.pod = pod
        self.container = container
        self.parser = PcapStreamParser()
        self.header: PcapHeader | None = None
        self.encoder: PcapngPacketEncoder | None = None
        self.interface_id: int | None = None
        self.pcap_compatible = True  # False: this pod's link type cannot join the pcap stream
        self.packets = 0
        self.data_bytes = 0
        self._raw_header = bytearray()
        # Set when a new tcpdump took over after a gap: the comment for its first packet.
        self.gap_comment: str | None = None

    def resume_after_gap(self, comment: str) -> None:
        """A new tcpdump's stream follows (a reconnect): read its header afresh, keep this
        pod's interface, and put `comment` on its first packet."""
        with self.pipeline.lock:
            parser = PcapStreamParser()
            parser.data_bytes = self.parser.data_bytes  # counters run on across the gap
            self.parser = parser
            self.gap_comment = comment

    def feed(self, chunk: memoryview | bytes) -> None:
        """Handle one piece of this pod's stream. Never raises: failures become a stop reason.

        Thread-safe: each pod's stream is read by a thread of its own.
        """
        pipeline = self.pipeline
        with pipeline.lock:
            if not pipeline.accepting:
                return
            try:
                pipeline._feed(self, chunk)
            except ZsniffError as err:
                pipeline.failure = err
                pipeline.stop_reason = StopReason.OUTPUT_FAILED


class OutputPipeline:
    """Shared by every pod of a capture: sinks, limits, names, counters."""

    #: pcapng straight from raw pcap records (PcapngPacketEncoder.feed_pcap). False sends every
    #: packet through Packet objects: the reference the fused path is tested against.
    fused_pcapng = True

    def __init__(
        self,
        sinks: Sequence[Sink],
        pod: PodInfo | Sequence[PodInfo],
        container: str | Sequence[str],
        context: str,
        opts: TcpdumpOptions,
        limits: CaptureLimits,
        book: NameBook | None,
    ) -> None:
        pods = [pod] if isinstance(pod, PodInfo) else list(pod)
        containers = [container] if isinstance(container, str) else list(container)
        self.sinks = list(sinks)
        self.context = context
        self.opts = opts
        self.limits = limits
        self.book = book
        self.lanes = [Lane(self, p, c) for p, c in zip(pods, containers, strict=True)]
        # Held while a lane writes: lanes are fed from their streams' reader threads.
        self.lock = threading.Lock()
        self.wants_pcap = any(s.fmt == "pcap" for s in self.sinks)
        self.wants_pcapng = any(s.fmt == "pcapng" for s in self.sinks)
        # Packet objects are needed for pcapng and for exact limits; plain splitting otherwise.
        self.split_only = (
            not self.wants_pcapng and limits.max_bytes is None and limits.packet_count is None
        )
        self.packets = 0
        self.data_bytes = 0
        self.output_bytes = 0
        self.stop_reason: StopReason | None = None
        self.failure: ZsniffError | None = None
        self.closed_sinks: list[str] = []
        self.notes: list[str] = []
        self.names_written = 0
        self._section_started = False
        self._pcap_header: PcapHeader | None = None
        self._next_interface = 0
        # Names as this file states them so far, and addresses whose owner changed within it.
        self._named: dict[str, str] = {}
        self._reowned: dict[str, str] = {}
        # Several pods: packets in time order through a reorder window (merge_in_time_order).
        self.merger: ReorderWindow[tuple[Lane, Packet]] | None = None
        self.dedup: Deduplicator | None = None  # both ends captured once (deduplicate)
        for sink in self.sinks:
            # A sink that starts files of its own (rotation) starts each with these blocks.
            bind = getattr(sink, "bind_preamble", None)
            if bind is not None:
                bind(self.file_preamble)

    # -- several pods in time order (pipeline/merge.py) ------------------------------------

    def merge_in_time_order(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        """Write the packets of several pods by timestamp, through a reorder window. Packets
        then go through Packet objects (not the fused one-pod path)."""
        self.merger = ReorderWindow(window_ns)

    def _feed_merged(self, lane: Lane, chunk: memoryview | bytes) -> None:
        merger = self.merger
        assert merger is not None
        packets = lane.parser.feed(chunk)
        self._start_lane_if_needed(lane)
        if packets:
            assert lane.header is not None
            nanosecond = lane.header.nanosecond
            for packet in packets:
                merger.push(packet.ts_ns(nanosecond), packet.caplen, (lane, packet))
        self._release(merger.ready())

    def deduplicate(self, window_ns: int = DEDUP_WINDOW_NS) -> None:
        """Write a packet seen at both ends (leaving one captured pod, entering another) once
        (pipeline/dedup.py). Needs the time order: merging is switched on too."""
        if self.merger is None:
            self.merge_in_time_order()
        self.dedup = Deduplicator(window_ns)

    @property
    def copies_dropped(self) -> int:
        return self.dedup.dropped if self.dedup is not None else 0

    def _release(self, held: list[tuple[Lane, Packet]]) -> None:
        """Write packets that left the window, in their order: runs of one lane at a time."""
        run: list[Packet] = []
        run_lane: Lane | None = None
        dedup = self.dedup
        for lane, packet in held:
            if dedup is not None:
                assert lane.header is not None
                if dedup.is_copy(packet.ts_ns(lane.header.nanosecond), lane,
                                 packet_key(lane.header.linktype, packet.data)):
                    continue
            if lane is not run_lane and run_lane is not None:
                self._encode_packets(run_lane, self._apply_limits(run))
                run = []
            if self.stop_reason is not None:
                return
            run_lane = lane
            run.append(packet)
        if run_lane is not None and self.stop_reason is None:
            self._encode_packets(run_lane, self._apply_limits(run))

    def flush_due(self) -> None:
        """Write what has waited the window (a quiet moment). Skipped while a lane writes."""
        if self.merger is None or not self.lock.acquire(blocking=False):
            return
        try:
            if self.accepting:
                self._release_guarded(self.merger.ready())
        finally:
            self.lock.release()

    def finish(self) -> None:
        """The streams have ended: write everything still held, and say what the window did."""
        merger = self.merger
        if merger is None:
            return
        with self.lock:
            held = merger.drain()
            if self.accepting:
                self._release_guarded(held)
        if self.dedup is not None:
            self.notes.append(
                f"--dedup: {plural(self.dedup.dropped, 'copy', 'copies')} of packets seen at "
                "both ends dropped (the same IP packet on another pod's interface within "
                f"{self.dedup.window_ns / 1e6:g} ms)")
        stats = merger.stats
        if stats.late:
            self.notes.append(
                f"{plural(stats.late, 'packet')} left the {merger.window_ns / 1e6:g} ms "
                "reorder window out of time order (their pod's stream lagged the others by "
                f"more than the window; up to {stats.max_backstep_ns / 1e6:.1f} ms back)")
        if stats.forced:
            self.notes.append(
                f"{plural(stats.forced, 'packet')} left the reorder window early: it was full "
                f"({merger.max_bytes // (1024 * 1024)} MiB)")

    def _release_guarded(self, held: list[tuple[Lane, Packet]]) -> None:
        try:
            self._release(held)
        except ZsniffError as err:
            self.failure = err
            self.stop_reason = StopReason.OUTPUT_FAILED

    def add_lane(self, pod: PodInfo, container: str) -> Lane:
        """A pod that joins while capturing (a workload's new replica). Its interface is
        written when its stream's header comes, as the first pods' are (pcapng allows an
        interface anywhere in a section before its first packet), with its own name."""
        with self.lock:
            lane = Lane(self, pod, container)
            self.lanes.append(lane)
            return lane

    @property
    def accepting(self) -> bool:
        return self.stop_reason is None and bool(self.sinks)

    def feed(self, chunk: memoryview | bytes) -> None:
        """Feed the first (for a one-pod capture, the only) pod's stream."""
        self.lanes[0].feed(chunk)

    # -- the hot path ----------------------------------------------------------------------

    def _feed(self, lane: Lane, chunk: memoryview | bytes) -> None:
        if lane.gap_comment is not None:
            self._feed_after_gap(lane, chunk)
            return
        if lane.header is None and len(lane._raw_header) < PCAP_HEADER_LENGTH:
            lane._raw_header += bytes(chunk[: PCAP_HEADER_LENGTH - len(lane._raw_header)])
        if self.merger is not None:
            self._feed_merged(lane, chunk)
            return
        if self.split_only:
            raw, count = lane.parser.feed_raw(chunk)
            self._start_lane_if_needed(lane)
            if count:
                self._count(lane, count, lane.parser.data_bytes - lane.data_bytes)
                self._write(pcap=raw if lane.pcap_compatible else b"", pcapng=b"")
            return
        if self.wants_pcapng and self.fused_pcapng and not self._reowned:
            self._feed_fused(lane, chunk)
            return
        packets = lane.parser.feed(chunk)
        self._start_lane_if_needed(lane)
        if not packets:
            return
        self._encode_packets(lane, self._apply_limits(packets))

    def _feed_fused(self, lane: Lane, chunk: memoryview | bytes) -> None:
        """pcapng without Packet objects: one walk from pcap records to EPBs (see feed_pcap).

        Writes the same bytes as the general path below; only packets touching a re-owned
        address (they need a comment each) go through Packet objects.
        """
        parser = lane.parser
        if lane.encoder is None:
            # Until the header is in, the general path reads it and starts the lane.
            if parser.header is None:
                packets = parser.feed(chunk)
                self._start_lane_if_needed(lane)
                if packets:
                    self._encode_packets(lane, self._apply_limits(packets))
                return
            self._start_lane_if_needed(lane)
        encoder = lane.encoder
        assert encoder is not None
        limits = self.limits
        max_bytes = limits.max_bytes
        parts: list[bytes | memoryview] = [b""]  # [0]: the names, once packets are known
        fed = encoder.feed_pcap(
            parser,
            chunk,
            parts,
            max_packets=None if limits.packet_count is None else limits.packet_count - self.packets,
            max_bytes=None if max_bytes is None else max_bytes - self.output_bytes,
            overhead=16 if self.wants_pcap else 32,
        )
        if fed.stop == "packets":
            self.stop_reason = StopReason.PACKET_LIMIT
        elif fed.stop == "bytes":
            self.stop_reason = StopReason.SIZE_LIMIT
        if not fed.packets:
            return
        self._count(lane, fed.packets, fed.data_bytes)
        names = self._name_updates()
        if self._reowned:
            # An owner changed just now: these packets may need comments; rare, so rebuild
            # them as Packets from the raw records and take the general route.
            parts = [names] if names else []
            self._extend_with_owner_comments(lane, _packets_of(fed.raw, parser), parts)
        else:
            parts[0] = names
        pcap: bytes | memoryview = b""
        if self.wants_pcap and lane.pcap_compatible:
            pcap = fed.raw
        self._write(pcap=pcap, pcapng=b"".join(parts))

    def _feed_after_gap(self, lane: Lane, chunk: memoryview | bytes) -> None:
        """The first bytes of a new tcpdump after a gap: its header (same link type as the
        one before, so the same interface), then the first packet, which carries the gap."""
        packets = lane.parser.feed(chunk)
        header = lane.parser.header
        if header is None:
            return
        assert lane.header is not None
        if (header.linktype, header.nanosecond) != (lane.header.linktype, lane.header.nanosecond):
            self.failure = ZsniffError(
                f"{lane.pod.namespace}/{lane.pod.name}: tcpdump's link type changed across a "
                "reconnect", "run the capture again", ExitStatus.CAPTURE_FAILED)
            self.stop_reason = StopReason.OUTPUT_FAILED
            return
        packets = self._apply_limits(packets)
        if not packets:
            return
        comment, lane.gap_comment = lane.gap_comment, None
        self._count(lane, len(packets), sum(p.caplen for p in packets))
        pcapng = b""
        if self.wants_pcapng:
            encoder = lane.encoder
            assert encoder is not None and comment is not None
            first = packets[0]
            parts: list[bytes | memoryview] = []
            names = self._name_updates()
            if names:
                parts.append(names)
            parts.append(enhanced_packet_block(
                encoder.interface_id, encoder.ts_units(first), first.caplen, first.origlen,
                first.data, comment))
            if self._reowned:
                self._extend_with_owner_comments(lane, packets[1:], parts)
            else:
                encoder.extend_parts(packets[1:], parts)
            pcapng = b"".join(parts)
        pcap = b""
        if self.wants_pcap and lane.pcap_compatible:
            pcap = b"".join(_pcap_records(packets, lane.header))
        self._write(pcap=pcap, pcapng=pcapng)

    def _encode_packets(self, lane: Lane, packets: list[Packet]) -> None:
        if not packets:
            return
        self._count(lane, len(packets), sum(p.caplen for p in packets))
        pcapng = b""
        if self.wants_pcapng:
            assert lane.encoder is not None
            parts: list[bytes | memoryview] = []
            names = self._name_updates()
            if names:
                parts.append(names)
            if self._reowned:
                self._extend_with_owner_comments(lane, packets, parts)
            else:
                lane.encoder.extend_parts(packets, parts)
            pcapng = b"".join(parts)
        pcap = b""
        if self.wants_pcap and lane.pcap_compatible:
            pcap = b"".join(_pcap_records(packets, lane.header))
        self._write(pcap=pcap, pcapng=pcapng)

    def _count(self, lane: Lane, packets: int, data_bytes: int) -> None:
        lane.packets += packets
        self.packets += packets
        self.data_bytes += data_bytes
        lane.data_bytes += data_bytes

    def _apply_limits(self, packets: list[Packet]) -> list[Packet]:
        limit = self.limits.packet_count
        if limit is not None and self.packets + len(packets) >= limit:
            packets = packets[: limit - self.packets]
            self.stop_reason = StopReason.PACKET_LIMIT
        max_bytes = self.limits.max_bytes
        if max_bytes is not None:
            kept = []
            size = self.output_bytes
            for packet in packets:
                size += 16 + packet.caplen if self.wants_pcap else 32 + packet.caplen
                if size > max_bytes:
                    self.stop_reason = StopReason.SIZE_LIMIT
                    break
                kept.append(packet)
            packets = kept
        return packets

    # -- headers ---------------------------------------------------------------------------

    def _start_lane_if_needed(self, lane: Lane) -> None:
        if lane.header is not None or lane.parser.header is None:
            return
        header = lane.header = lane.parser.header
        pcap = b""
        if self.wants_pcap:
            first = self._pcap_header
            if first is None:
                self._pcap_header = header
                pcap = bytes(lane._raw_header[:PCAP_HEADER_LENGTH])
            elif (first.linktype, first.nanosecond, first.byte_order) != (
                header.linktype, header.nanosecond, header.byte_order
            ):
                # Classic pcap has one link type and one time resolution for the whole file.
                lane.pcap_compatible = False
                self.notes.append(
                    f"{lane.pod.namespace}/{lane.pod.name}: link type {header.linktype} cannot "
                    "join the classic pcap stream (it is in the pcapng outputs only)"
                )
        pcapng = b""
        if self.wants_pcapng:
            parts = []
            if not self._section_started:
                parts.append(self._section_preamble())
            lane.interface_id = self._next_interface
            self._next_interface += 1
            lane.encoder = PcapngPacketEncoder(
                lane.interface_id, packet_nanosecond=header.nanosecond
            )
            parts.append(self._interface_block(lane, header))
            parts.append(self._lane_names(lane))
            pcapng = b"".join(parts)
        self._write(pcap=pcap, pcapng=pcapng)

    def file_preamble(self) -> bytes:
        """What a new file of this capture starts with, so that it can be read alone: the
        section header, the interface of every pod started so far (same ids), and one name
        table with every name this capture has stated. Called with the lock held."""
        if sum(sink.fmt == "pcapng" for sink in self.sinks) == 1:
            self._fresh_file_names()
        parts = [self._section_header()]
        entries = [(ip, [name]) for ip, name in sorted(self._named.items())]
        if entries:
            parts.append(name_resolution_block(entries))
        started = sorted((lane for lane in self.lanes if lane.interface_id is not None),
                         key=lambda lane: lane.interface_id or 0)
        for lane in started:
            assert lane.header is not None
            parts.append(self._interface_block(lane, lane.header))
        return b"".join(parts)

    def _fresh_file_names(self) -> None:
        """A new file names each address once, as it is now: an address released since (named
        itself) needs no name there, and none has changed owner in it yet. So over hours of
        pods coming and going this holds the addresses that have an owner, not every one the
        capture saw, and each file's name table stays as large as the cluster. Only when the
        files are the one pcapng output: a live Wireshark beside them reads one stream, whose
        history (a reused address's comment) this would cut short."""
        self._named = {ip: name for ip, name in self._named.items() if name != ip}
        self._reowned.clear()

    def _section_preamble(self) -> bytes:
        self._section_started = True
        parts = [self._section_header()]
        entries = self._all_names()
        if entries:
            parts.append(name_resolution_block(entries))
            self.names_written += len(entries)
        return b"".join(parts)

    def _section_header(self) -> bytes:
        pods = ", ".join(lane.pod.title for lane in self.lanes)
        first = self.lanes[0].pod
        if len(self.lanes) == 1:
            where = (
                f"namespace {first.namespace}; pod {first.name}; node {first.node or '-'}; "
                f"container {self.lanes[0].container}"
            )
        else:
            where = f"pods {pods}"
        comment = (
            f"kubectl-zsniff {__version__}; context {self.context or '-'}; {where}; "
            f"interface {self.opts.interface}"
            + (f"; filter {self.opts.bpf_filter}" if self.opts.bpf_filter else "")
        )
        return section_header_block(comment, userappl=f"kubectl-zsniff {__version__}")

    def _interface_block(self, lane: Lane, header: PcapHeader) -> bytes:
        pod = lane.pod
        return interface_description_block(
            header.linktype,
            header.snaplen,
            name=pod.title,
            description=(
                f"node {pod.node or '-'}, "
                + (f"capture pod {pod.namespace}/{pod.name}, " if pod.label else "")
                + (f"from capture pod {pod.via.namespace}/{pod.via.pod} in the pod's network "
                   "namespace, " if pod.via is not None else "")
                + f"container {lane.container}, "
                f"interface {self.opts.interface}"
            ),
            tsresol_nanos=header.nanosecond,
            filter=self.opts.bpf_filter or None,
        )

    # -- names -----------------------------------------------------------------------------

    def _all_names(self) -> list[tuple[str, list[str]]]:
        table: dict[str, str] = {}
        if self.book is not None:
            table.update({ip: owner.name for ip, owner in self.book.current().items()})
            self.book.drain_changes()
        # The captured pods are always named, even when listing pods was not allowed.
        for lane in self.lanes:
            for ip in lane.pod.pod_ips:
                table.setdefault(ip, lane.pod.title)
        self._named.update(table)
        return [(ip, [name]) for ip, name in sorted(table.items())]

    def _lane_names(self, lane: Lane) -> bytes:
        """An NRB for a pod's own addresses when the file does not name them so yet: a pod
        that joined later may be newer than what the name watch has told."""
        name = lane.pod.title
        entries = [(ip, [name]) for ip in lane.pod.pod_ips if self._named.get(ip) != name]
        if not entries:
            return b""
        for ip, _ in entries:
            if ip in self._named:
                self._reowned[ip] = name
            self._named[ip] = name
        self.names_written += len(entries)
        return name_resolution_block(entries)

    def _name_updates(self) -> bytes:
        """An NRB for addresses that appeared or changed owner since the last packets."""
        if self.book is None:
            return b""
        entries: list[tuple[str, list[str]]] = []
        for change in self.book.drain_changes():
            ip = change.ip
            previous = self._named.get(ip)
            # A released address is renamed to itself so that a new, not yet known owner's
            # packets never show the old pod's name.
            name = change.name.name if change.name is not None else ip
            if previous == name or (previous is None and change.name is None):
                continue
            if previous is not None:
                self._reowned[ip] = name
            self._named[ip] = name
            entries.append((ip, [name]))
        if not entries:
            return b""
        self.names_written += len(entries)
        return name_resolution_block(entries)

    def _extend_with_owner_comments(
        self, lane: Lane, packets: Sequence[Packet], parts: list[bytes | memoryview]
    ) -> None:
        """Packets touching a re-owned address carry its owner at capture time as a comment.

        One-pass readers (tshark, a live Wireshark) already apply each NRB from where it
        stands; a two-pass reader (Wireshark opening the file) keeps one name per address,
        the last: the comment keeps the truth visible there.
        """
        encoder, header = lane.encoder, lane.header
        assert encoder is not None and header is not None
        reowned = self._reowned
        plain: list[Packet] = []
        for packet in packets:
            addresses = ip_addresses(header.linktype, packet.data)
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

    # -- sinks -----------------------------------------------------------------------------

    def _write(self, *, pcap: bytes | memoryview, pcapng: bytes) -> None:
        for sink in list(self.sinks):
            data = pcap if sink.fmt == "pcap" else pcapng
            if not data:
                continue
            try:
                sink.write(data)
            except ReaderClosed as gone:
                if isinstance(gone, ReaderStalled):
                    self.notes.append(gone.message)
                self._reader_gone(sink)
                if not self.sinks:
                    self.stop_reason = StopReason.READER_CLOSED
                continue
            if sink is self.sinks[0]:
                self.output_bytes += len(data)
        if self.limits.max_bytes is not None and self.output_bytes >= self.limits.max_bytes:
            self.stop_reason = self.stop_reason or StopReason.SIZE_LIMIT

    def check_readers(self) -> bool:
        """Drop sinks whose reader is gone; True when that leaves none (the capture stops).

        Skipped while a lane is writing (it may be blocked on that very reader): the write
        then finds a gone reader by itself.
        """
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self._drop_gone_readers()
        finally:
            self.lock.release()
        return self.stop_reason is StopReason.READER_CLOSED

    def _drop_gone_readers(self) -> None:
        for sink in list(self.sinks):
            gone = getattr(sink, "reader_gone", None)
            if gone is not None and gone():
                self._reader_gone(sink)
                if not self.sinks:
                    self.stop_reason = self.stop_reason or StopReason.READER_CLOSED

    def _reader_gone(self, sink: Sink) -> None:
        """The sink's reader went away: closed by the user, or dead of a failure it names."""
        self.sinks.remove(sink)
        failure = getattr(sink, "reader_failure", None)
        err = failure() if failure is not None else None
        if err is not None:
            self.failure = self.failure or err
        else:
            self.closed_sinks.append(sink.label)

    def outputs_stopping(self) -> None:
        """The capture is stopping: a sink whose reader takes nothing more may now give up.

        Without the lock: a lane may hold it, blocked on that very reader.
        """
        for sink in list(self.sinks):
            stopping = getattr(sink, "stopping", None)
            if stopping is not None:
                stopping()

    def close(self) -> list[tuple[str, Any]]:
        with self.lock:
            return [(sink.label, sink.close()) for sink in self.sinks]


def _packets_of(raw: bytes | memoryview, parser: PcapStreamParser) -> list[Packet]:
    """The Packets of whole raw pcap records (as ``feed_pcap`` returns them)."""
    unpack = parser.record_struct.unpack_from
    packets: list[Packet] = []
    offset, end = 0, len(raw)
    while offset < end:
        ts_sec, ts_frac, caplen, origlen = unpack(raw, offset)
        start = offset + 16
        offset = start + caplen
        packets.append(Packet(ts_sec, ts_frac, caplen, origlen, bytes(raw[start:offset])))
    return packets


def _pcap_records(packets: Sequence[Packet], header: PcapHeader | None) -> list[bytes]:
    assert header is not None
    record = struct.Struct(header.byte_order + "IIII")
    out: list[bytes] = []
    for ts_sec, ts_frac, caplen, origlen, data in packets:
        out.append(record.pack(ts_sec, ts_frac, caplen, origlen))
        out.append(data)
    return out
