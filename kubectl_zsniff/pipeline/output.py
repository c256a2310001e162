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

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.detect import PCAP_HEADER_LENGTH
from kubectl_zsniff.formats.pcap import Packet, PcapHeader, PcapStreamParser
from kubectl_zsniff.formats.pcapng import PcapngPacketEncoder, enhanced_packet_block
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.options import CaptureLimits, OutputFormat, TcpdumpOptions
from kubectl_zsniff.pipeline.dedup import DEFAULT_WINDOW_NS as DEDUP_WINDOW_NS
from kubectl_zsniff.pipeline.dedup import Deduplicator, packet_key
from kubectl_zsniff.pipeline.fanout import FanOut
from kubectl_zsniff.pipeline.headers import interface_block, section_header
from kubectl_zsniff.pipeline.limits import OutputBudget
from kubectl_zsniff.pipeline.merge import DEFAULT_WINDOW_NS, ReorderWindow
from kubectl_zsniff.pipeline.naming import StatedNames
from kubectl_zsniff.pipeline.stop import StopReason
from kubectl_zsniff.sinks import Sink

__all__ = ["Lane", "OutputPipeline", "StopReason"]


# Encoded pieces (names, EPBs, pcap records) one release gathers before it writes them.
BATCH_PARTS = 512

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
                pipeline._fail(err)


class OutputPipeline:
    """Shared by every pod of a capture: lanes in, sinks out; the counters the summary reads.

    The parts: `names` (the NRBs, pipeline/naming.py), `budget` (--count, --max-size),
    `fanout` (the sinks), the reorder window and dedup (merge.py, dedup.py), the block
    headers (headers.py). What stays here is the hot path that ties them together.
    """

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
        self.context = context
        self.opts = opts
        self.lanes = [Lane(self, p, c) for p, c in zip(pods, containers, strict=True)]
        # Held while a lane writes: lanes are fed from their streams' reader threads.
        self.lock = threading.Lock()
        self.stop_reason: StopReason | None = None
        self.failure: ZsniffError | None = None
        self.notes: list[str] = []
        self.fanout = FanOut(sinks, note=self.notes.append, failed=self._reader_failed,
                             lost_all=self._readers_gone)
        self.wants_pcap = self.fanout.wants_pcap
        self.wants_pcapng = self.fanout.wants_pcapng
        self.budget = OutputBudget(limits, pcap_counted=self.wants_pcap)
        # Packet objects are needed for pcapng and for exact limits; plain splitting otherwise.
        self.split_only = not self.wants_pcapng and self.budget.unlimited
        self.names = StatedNames(book)
        self.packets = 0
        self.data_bytes = 0
        self.output_bytes = 0
        self._section_started = False
        self._pcap_header: PcapHeader | None = None
        self._next_interface = 0
        # Several pods: packets in time order through a reorder window (merge_in_time_order).
        self.merger: ReorderWindow[tuple[Lane, Packet]] | None = None
        self.dedup: Deduplicator | None = None  # both ends captured once (deduplicate)
        for sink in self.fanout.sinks:
            # A sink that starts files of its own (rotation) starts each with these blocks.
            sink.bind_preamble(self.file_preamble)

    @property
    def names_written(self) -> int:
        return self.names.written

    @property
    def closed_sinks(self) -> list[str]:
        return self.fanout.closed_by_reader

    @property
    def accepting(self) -> bool:
        return self.stop_reason is None and bool(self.fanout.sinks)

    def add_lane(self, pod: PodInfo, container: str) -> Lane:
        """A pod that joins while capturing (a workload's new replica). Its interface is
        written when its stream's header comes, as the first pods' are (pcapng allows an
        interface anywhere in a section before its first packet), with its own name."""
        with self.lock:
            lane = Lane(self, pod, container)
            self.lanes.append(lane)
            return lane

    def feed(self, chunk: memoryview | bytes) -> None:
        """Feed the first (for a one-pod capture, the only) pod's stream."""
        self.lanes[0].feed(chunk)

    def _fail(self, err: ZsniffError) -> None:
        self.failure = err
        self.stop_reason = StopReason.OUTPUT_FAILED

    # -- several pods in time order (pipeline/merge.py) ------------------------------------

    def merge_in_time_order(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        """Write the packets of several pods by timestamp, through a reorder window. Packets
        then go through Packet objects (not the fused one-pod path)."""
        self.merger = ReorderWindow(window_ns)

    def deduplicate(self, window_ns: int = DEDUP_WINDOW_NS) -> None:
        """Write a packet seen at both ends (leaving one captured pod, entering another) once
        (pipeline/dedup.py). Needs the time order: merging is switched on too."""
        if self.merger is None:
            self.merge_in_time_order()
        self.dedup = Deduplicator(window_ns)

    @property
    def copies_dropped(self) -> int:
        return self.dedup.dropped if self.dedup is not None else 0

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

    def _release(self, held: list[tuple[Lane, Packet]]) -> None:
        """Write packets that left the window, in their order: runs of one lane at a time.
        Pods interleave, so a run is often a packet or two: the runs of one release are
        encoded into one write (one write per sink instead of one per run), except under
        --max-size, whose budget counts the bytes written run by run."""
        batch: tuple[list[bytes], list[bytes | memoryview]] | None = (
            ([], []) if self.budget.max_bytes is None else None)
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
                self._encode_run(run_lane, self._apply_limits(run), batch)
                run = []
            if self.stop_reason is not None:
                run_lane = None
                break
            run_lane = lane
            run.append(packet)
        if run_lane is not None and self.stop_reason is None:
            self._encode_run(run_lane, self._apply_limits(run), batch)
        if batch is not None and (batch[0] or batch[1]):
            self._write(pcap=b"".join(batch[0]), pcapng=b"".join(batch[1]))

    def _encode_run(self, lane: Lane, packets: list[Packet],
                    batch: tuple[list[bytes], list[bytes | memoryview]] | None) -> None:
        """One lane's run: written now, or added to the release's one write."""
        if batch is None:
            self._encode_packets(lane, packets)
            return
        if not packets:
            return
        self._count(lane, len(packets), sum(p.caplen for p in packets))
        pcap_parts, pcapng_parts = batch
        if self.wants_pcapng:
            names = self.names.updates()
            if names:
                pcapng_parts.append(names)
            self._encode_into(lane, packets, pcapng_parts)
        pcap = self._pcap_of(lane, packets)
        if pcap:
            pcap_parts.append(pcap)
        if len(pcapng_parts) + len(pcap_parts) >= BATCH_PARTS:
            # A release after a quiet spell can be the whole window: write it in pieces
            # rather than hold a second copy of it encoded.
            self._write(pcap=b"".join(pcap_parts), pcapng=b"".join(pcapng_parts))
            pcap_parts.clear()
            pcapng_parts.clear()

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
            self.notes.append(self.dedup.note())
        self.notes.extend(merger.notes())

    def _release_guarded(self, held: list[tuple[Lane, Packet]]) -> None:
        try:
            self._release(held)
        except ZsniffError as err:
            self._fail(err)

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
        if self.wants_pcapng and self.fused_pcapng and not self.names.reowned:
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
        budget = self.budget
        max_packets, max_bytes = budget.packet_count, budget.max_bytes
        parts: list[bytes | memoryview] = [b""]  # [0]: the names, once packets are known
        fed = encoder.feed_pcap(
            parser, chunk, parts,
            max_packets=None if max_packets is None else max_packets - self.packets,
            max_bytes=None if max_bytes is None else max_bytes - self.output_bytes,
            overhead=budget.overhead,
        )
        if fed.stop == "packets":
            self.stop_reason = StopReason.PACKET_LIMIT
        elif fed.stop == "bytes":
            self.stop_reason = StopReason.SIZE_LIMIT
        if not fed.packets:
            return
        self._count(lane, fed.packets, fed.data_bytes)
        names = self.names.updates()
        if self.names.reowned:
            # An owner changed just now: these packets may need comments; rare, so rebuild
            # them as Packets from the raw records and take the general route.
            parts = [names] if names else []
            self._encode_into(lane, _packets_of(fed.raw, parser), parts)
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
            self._fail(ZsniffError(
                f"{lane.pod.namespace}/{lane.pod.name}: tcpdump's link type changed across a "
                "reconnect", "run the capture again", ExitStatus.CAPTURE_FAILED))
            return
        packets = self._apply_limits(packets)
        if not packets:
            return
        comment, lane.gap_comment = lane.gap_comment, None
        assert comment is not None
        self._count(lane, len(packets), sum(p.caplen for p in packets))
        pcapng = b""
        if self.wants_pcapng:
            encoder = lane.encoder
            assert encoder is not None
            first = packets[0]
            names = self.names.updates()
            parts: list[bytes | memoryview] = [names] if names else []
            parts.append(enhanced_packet_block(
                encoder.interface_id, encoder.ts_units(first), first.caplen, first.origlen,
                first.data, comment))
            self._encode_into(lane, packets[1:], parts)
            pcapng = b"".join(parts)
        self._write(pcap=self._pcap_of(lane, packets), pcapng=pcapng)

    def _encode_packets(self, lane: Lane, packets: list[Packet]) -> None:
        if not packets:
            return
        self._count(lane, len(packets), sum(p.caplen for p in packets))
        pcapng = b""
        if self.wants_pcapng:
            names = self.names.updates()
            parts: list[bytes | memoryview] = [names] if names else []
            self._encode_into(lane, packets, parts)
            pcapng = b"".join(parts)
        self._write(pcap=self._pcap_of(lane, packets), pcapng=pcapng)

    def _encode_into(self, lane: Lane, packets: Sequence[Packet],
                     parts: list[bytes | memoryview]) -> None:
        """The EPBs of `packets`, with owner comments once any address was re-owned."""
        encoder = lane.encoder
        assert encoder is not None and lane.header is not None
        if self.names.reowned:
            self.names.owner_commented(encoder, lane.header.linktype, packets, parts)
        else:
            encoder.extend_parts(packets, parts)

    def _pcap_of(self, lane: Lane, packets: Sequence[Packet]) -> bytes:
        if not self.wants_pcap or not lane.pcap_compatible:
            return b""
        return b"".join(_pcap_records(packets, lane.header))

    def _count(self, lane: Lane, packets: int, data_bytes: int) -> None:
        lane.packets += packets
        self.packets += packets
        self.data_bytes += data_bytes
        lane.data_bytes += data_bytes

    def _apply_limits(self, packets: list[Packet]) -> list[Packet]:
        budget = self.budget
        if budget.packet_count is None and budget.max_bytes is None:
            return packets  # the common case, once per chunk: no call
        kept, reason = budget.trim(packets, self.packets, self.output_bytes)
        if reason is not None:
            self.stop_reason = reason
        return kept

    # -- headers ---------------------------------------------------------------------------

    def _start_lane_if_needed(self, lane: Lane) -> None:
        if lane.header is not None or lane.parser.header is None:
            return
        header = lane.header = lane.parser.header
        pcap = self._join_pcap_stream(lane, header) if self.wants_pcap else b""
        pcapng = b""
        if self.wants_pcapng:
            parts = []
            if not self._section_started:
                self._section_started = True
                parts.append(self._section_header())
                parts.append(self.names.opening([lane.pod for lane in self.lanes]))
            lane.interface_id = self._next_interface
            self._next_interface += 1
            lane.encoder = PcapngPacketEncoder(
                lane.interface_id, packet_nanosecond=header.nanosecond
            )
            parts.append(interface_block(lane.pod, lane.container, header, self.opts))
            parts.append(self.names.for_pod(lane.pod))
            pcapng = b"".join(parts)
        self._write(pcap=pcap, pcapng=pcapng)

    def _join_pcap_stream(self, lane: Lane, header: PcapHeader) -> bytes:
        """The classic pcap stream's header when this lane is the first; b"" after it, and
        the lane left out when its link type or time resolution differs from the first's."""
        first = self._pcap_header
        if first is None:
            self._pcap_header = header
            return bytes(lane._raw_header[:PCAP_HEADER_LENGTH])
        if (first.linktype, first.nanosecond, first.byte_order) != (
            header.linktype, header.nanosecond, header.byte_order
        ):
            # Classic pcap has one link type and one time resolution for the whole file.
            lane.pcap_compatible = False
            self.notes.append(
                f"{lane.pod.namespace}/{lane.pod.name}: link type {header.linktype} cannot "
                "join the classic pcap stream (it is in the pcapng outputs only)"
            )
        return b""

    def _section_header(self) -> bytes:
        return section_header([(lane.pod, lane.container) for lane in self.lanes],
                              self.context, self.opts)

    def file_preamble(self) -> bytes:
        """What a new file of this capture starts with, so that it can be read alone: the
        section header, the interface of every pod started so far (same ids), and one name
        table with every name this capture has stated. Called with the lock held."""
        if sum(sink.fmt == OutputFormat.PCAPNG for sink in self.fanout.sinks) == 1:
            self.names.fresh_file()
        parts = [self._section_header(), self.names.table()]
        started = sorted((lane for lane in self.lanes if lane.interface_id is not None),
                         key=lambda lane: lane.interface_id or 0)
        for lane in started:
            assert lane.header is not None
            parts.append(interface_block(lane.pod, lane.container, lane.header, self.opts))
        return b"".join(parts)

    # -- sinks -----------------------------------------------------------------------------

    def _write(self, *, pcap: bytes | memoryview, pcapng: bytes) -> None:
        self.output_bytes += self.fanout.write(pcap, pcapng)
        # Inline, not budget.size_reached(): once per chunk on the hot path.
        max_bytes = self.budget.max_bytes
        if max_bytes is not None and self.output_bytes >= max_bytes:
            self.stop_reason = self.stop_reason or StopReason.SIZE_LIMIT

    def _reader_failed(self, err: ZsniffError) -> None:
        self.failure = self.failure or err

    def _readers_gone(self) -> None:
        self.stop_reason = StopReason.READER_CLOSED

    def check_readers(self) -> bool:
        """Drop sinks whose reader is gone; True when that leaves none (the capture stops).

        Skipped while a lane is writing (it may be blocked on that very reader): the write
        then finds a gone reader by itself.
        """
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.fanout.drop_gone_readers() and not self.fanout.sinks:
                self.stop_reason = self.stop_reason or StopReason.READER_CLOSED
        finally:
            self.lock.release()
        return self.stop_reason is StopReason.READER_CLOSED

    def outputs_stopping(self) -> None:
        """The capture is stopping: a sink whose reader takes nothing more may now give up.

        Without the lock: a lane may hold it, blocked on that very reader.
        """
        self.fanout.stopping()


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
