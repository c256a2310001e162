"""The capture session: from exec frames to packets to sinks, limits, stop and remote clean-up.

One direction only: websocket stdout -> PcapStreamParser -> (pcap records | pcapng blocks) ->
sinks. Core code: it reports through a `Reporter` and never prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .errors import ExitStatus, ZsniffError
from .execws import ApiEndpoint, ExecSession, StreamLostError, exec_capture_output
from .inject import PodInfo, capture_command
from .names import NameBook
from .options import CaptureLimits, TcpdumpOptions
from .packetaddr import ip_addresses
from .pcap import PcapHeader, PcapStreamParser, encode_pcap_header
from .pcapng import (
    PcapngPacketEncoder,
    enhanced_packet_block,
    interface_description_block,
    name_resolution_block,
    section_header_block,
)
from .sinks import ReaderClosed, Sink

STOP_GRACE_SECONDS = 10.0
STATS_INTERVAL = 0.25


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


EXIT_FOR_REASON = {
    StopReason.FINISHED: ExitStatus.OK,
    StopReason.PACKET_LIMIT: ExitStatus.LIMIT_REACHED,
    StopReason.DURATION: ExitStatus.LIMIT_REACHED,
    StopReason.SIZE_LIMIT: ExitStatus.LIMIT_REACHED,
    StopReason.INTERRUPTED: ExitStatus.INTERRUPTED,
    StopReason.TERMINATED: ExitStatus.TERMINATED,
    StopReason.READER_CLOSED: ExitStatus.READER_CLOSED,
    StopReason.STREAM_LOST: ExitStatus.STREAM_LOST,
    StopReason.OUTPUT_FAILED: ExitStatus.OUTPUT_ERROR,
}


class Reporter(Protocol):
    def progress(self, message: str) -> None: ...

    def stats(self, packets: int, data_bytes: int, elapsed: float) -> None: ...


@dataclass
class TcpdumpReport:
    """What tcpdump said on stderr."""

    pid: int | None = None
    listening: str | None = None
    captured: int | None = None
    received: int | None = None
    dropped: int | None = None
    errors: list[str] = field(default_factory=list)
    _partial: str = ""

    _COUNTERS = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)$")

    def feed(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.strip())

    def finish(self) -> None:
        if self._partial.strip():
            self._line(self._partial.strip())
        self._partial = ""

    def _line(self, line: str) -> None:
        if not line:
            return
        if line.startswith("zsniff-pid "):
            with contextlib.suppress(IndexError, ValueError):
                self.pid = int(line.split()[1])
            return
        if line.startswith(("listening on ", "tcpdump: listening on ")):
            self.listening = line.removeprefix("tcpdump: ")
            return
        match = self._COUNTERS.match(line)
        if match:
            value = int(match.group(1))
            kind = match.group(2)
            if kind == "captured":
                self.captured = value
            elif kind.startswith("received"):
                self.received = value
            else:
                self.dropped = value
            return
        if line.startswith("tcpdump: verbose output suppressed"):
            return
        self.errors.append(line)


def tcpdump_failure(
    report: TcpdumpReport, exit_code: int | None, opts: TcpdumpOptions
) -> ZsniffError:
    """Turn what tcpdump said into one clear error."""
    text = " ".join(report.errors) or f"exit code {exit_code}"
    lowered = text.lower()
    if (
        "syntax error" in lowered
        or "filter" in lowered
        and "expression" in lowered
        or "can't parse filter" in lowered
        or "illegal" in lowered
        and "filter" in lowered
    ):
        return ZsniffError(
            f"tcpdump rejected the filter {opts.bpf_filter!r}: {_strip_prefix(text)}",
            "check the BPF syntax (man pcap-filter); quote the filter as one argument",
            ExitStatus.BAD_FILTER,
        )
    if (
        "no such device" in lowered
        or "doesn't exist" in lowered
        or "that device" in lowered
        and "not" in lowered
        and "permission" not in lowered
    ):
        return ZsniffError(
            f"tcpdump cannot open interface {opts.interface!r}: {_strip_prefix(text)}",
            "list the pod's interfaces with: kubectl exec POD -- ip link (try -i any)",
            ExitStatus.CAPTURE_FAILED,
        )
    if "permission" in lowered or "operation not permitted" in lowered:
        return ZsniffError(
            f"tcpdump is not allowed to capture: {_strip_prefix(text)}",
            "the capture container lacks NET_RAW: the namespace's PodSecurity level or the "
            "container runtime (CRI-O drops NET_RAW) forbids it; see README (PodSecurity)",
            ExitStatus.CAPTURE_FAILED,
        )
    if exit_code in (126, 127) or "not found" in lowered:
        return ZsniffError(
            f"the capture image cannot run tcpdump: {_strip_prefix(text)}",
            "use an image that has sh and tcpdump (--image)",
            ExitStatus.CAPTURE_FAILED,
        )
    return ZsniffError(f"tcpdump failed: {_strip_prefix(text)}", "", ExitStatus.CAPTURE_FAILED)


def _strip_prefix(text: str) -> str:
    return text[len("tcpdump: ") :] if text.startswith("tcpdump: ") else text


def check_filter_locally(opts: TcpdumpOptions) -> None:
    """Reject a bad filter before anything is injected, when a local tcpdump can compile it."""
    if not opts.bpf_filter:
        return
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return
    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        # An empty Ethernet capture lets tcpdump compile without privileges or an interface.
        empty.write(encode_pcap_header(linktype=1, snaplen=opts.snaplen))
        empty.flush()
        try:
            proc = subprocess.run(
                [tcpdump, "-d", "-r", empty.name, opts.bpf_filter],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return
    if proc.returncode != 0:
        report = TcpdumpReport()
        report.feed(proc.stderr)
        report.finish()
        report.errors = [e for e in report.errors if not e.startswith("reading from file")]
        raise tcpdump_failure(report, proc.returncode, opts)


class OutputPipeline:
    """Turns tcpdump's pcap stream into what each sink wants, whole records/blocks only."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        pod: PodInfo,
        container: str,
        context: str,
        opts: TcpdumpOptions,
        limits: CaptureLimits,
        book: NameBook | None,
    ) -> None:
        self.sinks = list(sinks)
        self.pod = pod
        self.container = container
        self.context = context
        self.opts = opts
        self.limits = limits
        self.book = book
        self.parser = PcapStreamParser()
        self.header: PcapHeader | None = None
        self.encoder: PcapngPacketEncoder | None = None
        self.wants_pcap = any(s.fmt == "pcap" for s in self.sinks)
        self.wants_pcapng = any(s.fmt == "pcapng" for s in self.sinks)
        # Packet objects are needed for pcapng and for exact limits; plain splitting otherwise.
        self.split_only = (
            not self.wants_pcapng and limits.max_bytes is None and limits.packet_count is None
        )
        self._raw_header = bytearray()
        self.packets = 0
        self.data_bytes = 0
        self.output_bytes = 0
        self.stop_reason: StopReason | None = None
        self.failure: ZsniffError | None = None
        self.closed_sinks: list[str] = []
        self.names_written = 0
        # Names as this file states them so far, and addresses whose owner changed within it.
        self._named: dict[str, str] = {}
        self._reowned: dict[str, str] = {}

    @property
    def accepting(self) -> bool:
        return self.stop_reason is None and bool(self.sinks)

    def feed(self, chunk: memoryview | bytes) -> None:
        """Handle one stdout frame. Never raises: failures become a stop reason."""
        if not self.accepting:
            return
        try:
            self._feed(chunk)
        except ZsniffError as err:
            self.failure = err
            self.stop_reason = StopReason.OUTPUT_FAILED

    def _feed(self, chunk: memoryview | bytes) -> None:
        if self.header is None and len(self._raw_header) < 24:
            self._raw_header += bytes(chunk[: 24 - len(self._raw_header)])
        if self.split_only:
            raw, count = self.parser.feed_raw(chunk)
            self._start_if_needed()
            if count:
                self.packets += count
                self.data_bytes = self.parser.data_bytes
                self._write(pcap=raw, pcapng=b"")
            return
        packets = self.parser.feed(chunk)
        self._start_if_needed()
        if not packets:
            return
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
        if not packets:
            return
        self.packets += len(packets)
        self.data_bytes += sum(p.caplen for p in packets)
        pcapng = b""
        if self.wants_pcapng:
            assert self.encoder is not None
            parts: list[bytes] = []
            names = self._name_updates()
            if names:
                parts.append(names)
            if self._reowned:
                self._extend_with_owner_comments(packets, parts)
            else:
                self.encoder.extend_parts(packets, parts)
            pcapng = b"".join(parts)
        pcap = b""
        if self.wants_pcap:
            pcap = b"".join(_pcap_records(packets, self.header))
        self._write(pcap=pcap, pcapng=pcapng)

    def _start_if_needed(self) -> None:
        if self.header is not None or self.parser.header is None:
            return
        self.header = self.parser.header
        pcapng = b""
        if self.wants_pcapng:
            self.encoder = PcapngPacketEncoder(0, packet_nanosecond=self.header.nanosecond)
            pcapng = self.pcapng_preamble(self.header)
        self._write(pcap=bytes(self._raw_header[:24]), pcapng=pcapng)

    def pcapng_preamble(self, header: PcapHeader) -> bytes:
        pod = self.pod
        comment = (
            f"kubectl-zsniff {__version__}; context {self.context or '-'}; "
            f"namespace {pod.namespace}; pod {pod.name}; node {pod.node or '-'}; "
            f"container {self.container}; interface {self.opts.interface}"
            + (f"; filter {self.opts.bpf_filter}" if self.opts.bpf_filter else "")
        )
        parts = [
            section_header_block(comment, userappl=f"kubectl-zsniff {__version__}"),
            interface_description_block(
                header.linktype,
                header.snaplen,
                name=f"{pod.namespace}/{pod.name}",
                description=(
                    f"node {pod.node or '-'}, container {self.container}, "
                    f"interface {self.opts.interface}"
                ),
                tsresol_nanos=header.nanosecond,
                filter=self.opts.bpf_filter or None,
            ),
        ]
        entries = self._all_names()
        if entries:
            parts.append(name_resolution_block(entries))
            self.names_written += len(entries)
        return b"".join(parts)

    def _all_names(self) -> list[tuple[str, list[str]]]:
        table: dict[str, str] = {}
        if self.book is not None:
            table.update({ip: owner.name for ip, owner in self.book.current().items()})
            self.book.drain_changes()
        # The captured pod is always named, even when listing pods was not allowed.
        for ip in self.pod.pod_ips:
            table.setdefault(ip, f"{self.pod.namespace}/{self.pod.name}")
        self._named.update(table)
        return [(ip, [name]) for ip, name in sorted(table.items())]

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

    def _extend_with_owner_comments(self, packets: Sequence[Any], parts: list[bytes]) -> None:
        """Packets touching a re-owned address carry its owner at capture time as a comment.

        One-pass readers (tshark, a live Wireshark) already apply each NRB from where it
        stands; a two-pass reader (Wireshark opening the file) keeps one name per address,
        the last: the comment keeps the truth visible there.
        """
        assert self.encoder is not None and self.header is not None
        linktype = self.header.linktype
        reowned = self._reowned
        plain: list[Any] = []
        for packet in packets:
            addresses = ip_addresses(linktype, packet.data)
            touched = [ip for ip in addresses or () if ip in reowned]
            if not touched:
                plain.append(packet)
                continue
            if plain:
                self.encoder.extend_parts(plain, parts)
                plain = []
            comment = "; ".join(
                f"zsniff: {ip} was {reowned[ip]} at capture time" for ip in dict.fromkeys(touched)
            )
            parts.append(enhanced_packet_block(
                0, self.encoder.ts_units(packet), packet.caplen, packet.origlen, packet.data,
                comment,
            ))
        if plain:
            self.encoder.extend_parts(plain, parts)

    def _write(self, *, pcap: bytes, pcapng: bytes) -> None:
        for sink in list(self.sinks):
            data = pcap if sink.fmt == "pcap" else pcapng
            if not data:
                continue
            try:
                sink.write(data)
            except ReaderClosed:
                self.sinks.remove(sink)
                self.closed_sinks.append(sink.label)
                if not self.sinks:
                    self.stop_reason = StopReason.READER_CLOSED
                continue
            if sink is self.sinks[0]:
                self.output_bytes += len(data)
        if self.limits.max_bytes is not None and self.output_bytes >= self.limits.max_bytes:
            self.stop_reason = self.stop_reason or StopReason.SIZE_LIMIT

    def check_readers(self) -> bool:
        """Drop sinks whose reader is gone; True when that leaves none (the capture stops)."""
        for sink in list(self.sinks):
            gone = getattr(sink, "reader_gone", None)
            if gone is not None and gone():
                self.sinks.remove(sink)
                self.closed_sinks.append(sink.label)
                if not self.sinks:
                    self.stop_reason = self.stop_reason or StopReason.READER_CLOSED
        return self.stop_reason is StopReason.READER_CLOSED

    def close(self) -> list[tuple[str, Any]]:
        results = []
        for sink in self.sinks:
            results.append((sink.label, sink.close()))
        return results


def _pcap_records(packets: Sequence[Any], header: PcapHeader | None) -> list[bytes]:
    import struct

    assert header is not None
    record = struct.Struct(header.byte_order + "IIII")
    out: list[bytes] = []
    for ts_sec, ts_frac, caplen, origlen, data in packets:
        out.append(record.pack(ts_sec, ts_frac, caplen, origlen))
        out.append(data)
    return out


@dataclass
class CaptureSummary:
    pod: PodInfo
    container: str
    packets: int
    data_bytes: int
    output_bytes: int
    seconds: float
    reason: StopReason
    exit_status: ExitStatus
    tcpdump: TcpdumpReport
    remote_stopped: bool | None
    first_packet_seconds: float | None
    names_written: int
    closed_sinks: list[str]
    notes: list[str]
    sink_results: list[tuple[str, Any]]
    error: ZsniffError | None = None


class CaptureStream:
    """Runs tcpdump in the capture container and drives the pipeline until it stops."""

    def __init__(
        self,
        endpoint: ApiEndpoint,
        pod: PodInfo,
        container: str,
        tcpdump: TcpdumpOptions,
        limits: CaptureLimits,
        pipeline: OutputPipeline,
        reporter: Reporter,
    ) -> None:
        self.endpoint = endpoint
        self.pod = pod
        self.container = container
        self.tcpdump = tcpdump
        self.limits = limits
        self.pipeline = pipeline
        self.reporter = reporter
        self.report = TcpdumpReport()
        self._stop = asyncio.Event()
        self._signal_reason: StopReason | None = None
        self._signals_seen = 0
        self._first_packet_at: float | None = None

    def request_stop(self, reason: StopReason) -> None:
        if self._signal_reason is None:
            self._signal_reason = reason
        self._stop.set()

    def _on_signal(self, reason: StopReason) -> None:
        self._signals_seen += 1
        self.request_stop(reason)

    def _argv(self) -> list[str]:
        args = self.tcpdump.argv()
        if self.limits.packet_count is not None:
            # tcpdump stops itself exactly there; the pipeline enforces it too.
            args = ["-c", str(self.limits.packet_count), *args]
        return capture_command(self.container, args)

    async def run(self) -> CaptureSummary:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        session = ExecSession(
            self.endpoint,
            self.pod.namespace,
            self.pod.name,
            self.container,
            self._argv(),
            stdin=True,
        )
        await session.connect()
        installed: list[signal.Signals] = []
        for signum, signal_reason in (
            (signal.SIGINT, StopReason.INTERRUPTED),
            (signal.SIGTERM, StopReason.TERMINATED),
        ):
            try:
                loop.add_signal_handler(signum, self._on_signal, signal_reason)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # Windows
                pass
        pipeline = self.pipeline

        def on_stdout(chunk: memoryview) -> None:
            pipeline.feed(chunk)
            if self._first_packet_at is None and pipeline.packets:
                self._first_packet_at = time.monotonic() - started
            if pipeline.stop_reason is not None and not self._stop.is_set():
                self._stop.set()

        def on_stderr(data: bytes) -> None:
            was_listening = self.report.listening
            self.report.feed(data)
            if self.report.listening and not was_listening:
                # tcpdump's own word that packets now flow: users and scripts wait for it.
                self.reporter.progress(f"tcpdump {self.report.listening}")

        run_task = asyncio.create_task(session.run(on_stdout, on_stderr))
        stop_task = asyncio.create_task(self._stop.wait())
        stats_task = asyncio.create_task(self._report_stats(started))
        duration = self.limits.duration
        timer = (
            loop.call_later(duration, self.request_stop, StopReason.DURATION) if duration else None
        )
        remote_stopped: bool | None = None
        notes: list[str] = []
        lost: StreamLostError | None = None
        try:
            await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if not run_task.done():
                await self._stop_remote(session, run_task, notes)
            try:
                result = run_task.result()
            except StreamLostError as err:
                lost = err
                result = None
        finally:
            if timer is not None:
                timer.cancel()
            stop_task.cancel()
            stats_task.cancel()
            for installed_signal in installed:
                loop.remove_signal_handler(installed_signal)
            await session.close()
        self.report.finish()

        reason = pipeline.stop_reason or self._signal_reason
        if lost is not None:
            reason = reason or StopReason.STREAM_LOST
        remote_stopped = await self._verify_stopped(notes)
        error: ZsniffError | None = pipeline.failure
        if result is not None and reason is None:
            reason = StopReason.FINISHED
            if result.exit_code not in (0, None) or (
                result.exit_code is None and result.failure_message
            ):
                if result.exit_code is None:
                    self.report.errors.append(result.failure_message or "")
                error = tcpdump_failure(self.report, result.exit_code, self.tcpdump)
        if lost is not None and reason == StopReason.STREAM_LOST:
            error = ZsniffError(
                f"lost the connection to the API server after {pipeline.packets} packets",
                "the capture file is valid up to the last whole packet; run again to continue",
                ExitStatus.STREAM_LOST,
            )
        assert reason is not None
        return CaptureSummary(
            pod=self.pod,
            container=self.container,
            packets=pipeline.packets,
            data_bytes=pipeline.data_bytes,
            output_bytes=pipeline.output_bytes,
            seconds=time.monotonic() - started,
            reason=reason,
            exit_status=error.status if error else EXIT_FOR_REASON[reason],
            tcpdump=self.report,
            remote_stopped=remote_stopped,
            first_packet_seconds=self._first_packet_at,
            names_written=pipeline.names_written,
            closed_sinks=pipeline.closed_sinks,
            notes=notes,
            sink_results=[],
            error=error,
        )

    async def _report_stats(self, started: float) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.reporter.stats(
                self.pipeline.packets, self.pipeline.data_bytes, time.monotonic() - started
            )
            # A reader that went away is noticed now, not at the next packet, which on a
            # quiet pod may never come.
            if self.pipeline.check_readers() and not self._stop.is_set():
                self._stop.set()

    async def _stop_remote(
        self, session: ExecSession, run_task: asyncio.Task[Any], notes: list[str]
    ) -> None:
        """Ask tcpdump to stop and keep reading until it has flushed everything."""
        try:
            closed = await session.close_stdin()
        except Exception:
            closed = False
        if not closed and self.report.pid is not None:
            await self._kill(signal.SIGTERM)
        done, _ = await asyncio.wait({run_task}, timeout=STOP_GRACE_SECONDS)
        if not done:
            notes.append("tcpdump did not stop within the grace period; it was killed")
            await session.close()
            await asyncio.wait({run_task}, timeout=STOP_GRACE_SECONDS)

    async def _kill(self, signum: int) -> int | None:
        if self.report.pid is None:
            return None
        try:
            code, _, _ = await exec_capture_output(
                self.endpoint,
                self.pod.namespace,
                self.pod.name,
                self.container,
                ["kill", f"-{signal.Signals(signum).name[3:]}", str(self.report.pid)],
                timeout=15,
            )
            return code
        except ZsniffError:
            return None

    async def _verify_stopped(self, notes: list[str]) -> bool | None:
        """Check that tcpdump is gone in the pod; kill it if not. None: could not check."""
        if self.report.pid is None:
            return None
        for attempt in range(3):
            try:
                code, _, _ = await exec_capture_output(
                    self.endpoint,
                    self.pod.namespace,
                    self.pod.name,
                    self.container,
                    ["kill", "-0", str(self.report.pid)],
                    timeout=15,
                )
            except ZsniffError as err:
                notes.append(f"could not verify that tcpdump stopped: {err.message}")
                return None
            if code != 0:
                return True
            await self._kill(signal.SIGTERM if attempt == 0 else signal.SIGKILL)
            await asyncio.sleep(0.5)
        notes.append(f"tcpdump (pid {self.report.pid}) still runs in the pod")
        return False


def output_path_is_empty(path: Path | None) -> bool:
    return path is not None and str(path) != "-" and path.exists() and path.stat().st_size == 0
