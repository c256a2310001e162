"""--count and --max-size as the output applies them: packets cut before a limit, never after.

The size is estimated per packet before it is encoded (a record header, or an EPB's, plus the
packet's bytes), so a capture stops before its output passes --max-size, not one chunk later.
"""

from __future__ import annotations

from kubectl_zsniff.formats.pcap import Packet
from kubectl_zsniff.options import CaptureLimits
from kubectl_zsniff.pipeline.stop import StopReason

PCAP_RECORD_OVERHEAD = 16  # a classic pcap record header
PCAPNG_RECORD_OVERHEAD = 32  # an EPB's header and trailer, without padding


class OutputBudget:
    def __init__(self, limits: CaptureLimits, *, pcap_counted: bool) -> None:
        self.packet_count = limits.packet_count
        self.max_bytes = limits.max_bytes
        # One estimate for every sink: a pcap record's size as soon as any sink takes pcap.
        self.overhead = PCAP_RECORD_OVERHEAD if pcap_counted else PCAPNG_RECORD_OVERHEAD

    @property
    def unlimited(self) -> bool:
        return self.packet_count is None and self.max_bytes is None

    def trim(self, batch: list[Packet], packets: int,
             output_bytes: int) -> tuple[list[Packet], StopReason | None]:
        """The packets of `batch` that fit, and the limit that cut it (None: all fit)."""
        reason: StopReason | None = None
        limit = self.packet_count
        if limit is not None and packets + len(batch) >= limit:
            batch = batch[: limit - packets]
            reason = StopReason.PACKET_LIMIT
        max_bytes = self.max_bytes
        if max_bytes is not None:
            kept = []
            size = output_bytes
            for packet in batch:
                size += self.overhead + packet.caplen
                if size > max_bytes:
                    reason = StopReason.SIZE_LIMIT
                    break
                kept.append(packet)
            batch = kept
        return batch, reason
