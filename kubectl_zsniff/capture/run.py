"""The capture: tcpdump in each pod's capture container, streamed over exec into the output
pipeline; limits, signals, stopping tcpdump and checking that it is gone.

One direction only: websocket stdout -> pipeline lane (pcap parser) -> sinks. Core code: it
reports through a `Reporter` and never prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from kubectl_zsniff.capture.compress import (
    GzipStream,
    compressed_capture_command,
    compression_notes,
    missing_compressor,
)
from kubectl_zsniff.capture.reconnect import Reconnector
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.pcap import encode_pcap_header
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.kube.scripts import NO_POD_PROCESS_EXIT, capture_command
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
from kubectl_zsniff.pipeline.output import Lane, OutputPipeline, StopReason
from kubectl_zsniff.sinks.results import ClosedSink
from kubectl_zsniff.wire.connector import ExecConnector, ExecStream, WebSocketConnector
from kubectl_zsniff.wire.endpoint import ApiEndpoint
from kubectl_zsniff.wire.execws import ExecResult, StreamLostError
from kubectl_zsniff.words import plural

T = TypeVar("T")

__all__ = ["CaptureRun", "CaptureSummary", "OutputPipeline", "PodCapture", "StopReason",
           "TcpdumpReport", "check_filter_locally", "tcpdump_failure"]

STOP_GRACE_SECONDS = 10.0
SLOW_STOP_SECONDS = 1.0  # a stop step taking longer than this is announced
STATS_INTERVAL = 0.25
# How often tcpdump is asked for its counters (a line on its stdin, see CAPTURE_SCRIPT). Its
# answer also keeps a quiet capture's stream busy, well inside any idle timeout on the path
# (kubelet's is 5 min on hardened clusters, client-go's own websocket gives up after 60 s).
COUNTERS_INTERVAL = 2.0
# A new warning about kernel drops only after this long without one.
DROPS_WARNING_EVERY = 30.0
LEAVING_WAIT_SECONDS = 3.0  # how long a followed pod's ended lane waits for word of its deletion


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

    def stats(self, packets: int, data_bytes: int, elapsed: float, dropped: int | None = None,
              reconnecting: int = 0) -> None: ...


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
    ended: bool = False  # tcpdump printed its last counters: it ended (not just the stream)
    # The counters of earlier tcpdumps of this capture (before a reconnect): tcpdump's own
    # start from zero.
    _earlier: tuple[int, int, int] = (0, 0, 0)

    _COUNTERS = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)$")
    # What tcpdump prints on SIGUSR1 while it goes on capturing (4.99: one line).
    _LIVE_COUNTERS = re.compile(
        r"^(?:tcpdump: )?(\d+) packets? captured, (\d+) packets? received by filter, "
        r"(\d+) packets? dropped by kernel")

    def feed(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.strip())

    def restart(self) -> None:
        """A new tcpdump takes over (a reconnect): its counters add to those so far."""
        self._earlier = (self.captured or 0, self.received or 0, self.dropped or 0)
        self.pid = None
        self.listening = None
        self.ended = False
        self._partial = ""

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
        live = self._LIVE_COUNTERS.match(line)
        if live:
            captured, received, dropped = self._earlier
            self.captured = captured + int(live.group(1))
            self.received = received + int(live.group(2))
            self.dropped = dropped + int(live.group(3))
            return
        match = self._COUNTERS.match(line)
        if match:
            value = int(match.group(1))
            kind = match.group(2)
            captured, received, dropped = self._earlier
            if kind == "captured":
                self.captured = captured + value
            elif kind.startswith("received"):
                self.received = received + value
            else:
                self.dropped = dropped + value
                self.ended = True
            return
        if line.startswith(("tcpdump: verbose output suppressed", "pcap_stats: ")):
            # pcap_stats: a counters request (SIGUSR1) that met tcpdump closing its socket.
            return
        self.errors.append(line)


def tcpdump_failure(
    report: TcpdumpReport, exit_code: int | None, opts: TcpdumpOptions,
    pod: PodInfo | None = None, container: str | None = None,
) -> ZsniffError:
    """Turn what tcpdump said into one clear error (`pod`, `container`: where it ran)."""
    text = " ".join(report.errors) or f"exit code {exit_code}"
    lowered = text.lower()
    if pod is not None and pod.via is not None:
        via_failure = _via_node_failure(text, exit_code, pod)
        if via_failure is not None:
            return via_failure
    if (
        "syntax error" in lowered
        or "filter" in lowered
        and "expression" in lowered
        or "can't parse filter" in lowered
        or "illegal" in lowered
        and "filter" in lowered
    ):
        return filter_error(opts.bpf_filter, text)
    if (
        "no such device" in lowered
        or "doesn't exist" in lowered
        or "that device" in lowered
        and "not" in lowered
        and "permission" not in lowered
    ):
        return ZsniffError(
            f"tcpdump cannot open interface {opts.interface!r}: {_strip_prefix(text)}",
            "list the pod's interfaces with: kubectl exec "
            + (f"-n {pod.namespace} {pod.name}" + (f" -c {container}" if container else "")
               if pod is not None else "POD")
            + " -- ip link (or capture them all with -i any)",
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
    return ZsniffError(
        f"tcpdump failed: {_strip_prefix(text)}",
        "that is tcpdump's own message; check -i, -s and the filter, or try --debug",
        ExitStatus.CAPTURE_FAILED,
    )


def _via_node_failure(text: str, exit_code: int | None, pod: PodInfo) -> ZsniffError | None:
    """What only a --via-node capture can meet: the pod's processes not on its node, or the
    capture pod not allowed into the pod's network namespace."""
    who = f"{pod.namespace}/{pod.name}"
    if exit_code == NO_POD_PROCESS_EXIT and "zsniff: no process of pod" in text:
        return ZsniffError(
            f"no process of pod {who} runs on node {pod.node or '?'}: it was deleted or "
            "restarted elsewhere",
            f"check it: kubectl get pod -n {pod.namespace} {pod.name} -o wide",
            ExitStatus.POD_NOT_RUNNING)
    if "nsenter" in text.lower():
        return ZsniffError(
            f"the capture pod could not enter the network namespace of {who}: {text}",
            "it needs hostPID with SYS_ADMIN and SYS_PTRACE, which a node's AppArmor or "
            "seccomp may still refuse: try --via-node --privileged",
            ExitStatus.CAPTURE_FAILED)
    return None


def _strip_prefix(text: str) -> str:
    return text[len("tcpdump: ") :] if text.startswith("tcpdump: ") else text


def check_filter_locally(opts: TcpdumpOptions) -> None:
    """Reject a bad filter before anything is injected, when a local tcpdump can compile it.

    tcpdump compiles the filter against an empty Ethernet capture (no privileges, no
    interface). When that fails while the same run without the filter works, the filter is what
    tcpdump rejects, whatever its wording ("syntax error", "illegal port number", "unknown
    host"): a filter error (exit 10), never a capture failure.
    """
    if not opts.bpf_filter:
        return
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return
    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(encode_pcap_header(linktype=1, snaplen=opts.snaplen))
        empty.flush()

        def compile_filter(*bpf: str) -> subprocess.CompletedProcess[bytes] | None:
            try:
                return subprocess.run(
                    [tcpdump, "-d", "-r", empty.name, *bpf],
                    capture_output=True, timeout=10, check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                return None

        proc = compile_filter(opts.bpf_filter)
        if proc is None or proc.returncode == 0:
            return
        without = compile_filter()
    report = TcpdumpReport()
    report.feed(proc.stderr)
    report.finish()
    report.errors = [e for e in report.errors if not e.startswith("reading from file")]
    if without is not None and without.returncode == 0:
        raise filter_error(opts.bpf_filter, " ".join(report.errors) or "rejected")
    raise tcpdump_failure(report, proc.returncode, opts)


def filter_error(bpf_filter: str, reason: str) -> ZsniffError:
    return ZsniffError(
        f"tcpdump rejected the filter {bpf_filter!r}: {_strip_prefix(reason)}",
        "check the BPF syntax (man pcap-filter); quote the filter as one argument",
        ExitStatus.BAD_FILTER,
    )


@dataclass
class PodCapture:
    """How the capture of one pod ended."""

    pod: PodInfo
    container: str
    report: TcpdumpReport
    packets: int = 0
    remote_stopped: bool | None = None
    error: ZsniffError | None = None
    lost: bool = False
    finished_by_itself: bool = False
    given_up: bool = False  # a second Ctrl-C: the stop was not waited for
    notes: list[str] = field(default_factory=list)


@dataclass
class CaptureSummary:
    pods: list[PodCapture]
    packets: int
    data_bytes: int
    output_bytes: int
    seconds: float
    reason: StopReason
    exit_status: ExitStatus
    names_written: int
    closed_sinks: list[str]
    notes: list[str]
    sink_results: list[ClosedSink]
    error: ZsniffError | None = None

    @property
    def pod(self) -> PodInfo:
        return self.pods[0].pod

    @property
    def remote_stopped(self) -> bool | None:
        """True when tcpdump is verified gone in every pod, False if it runs in any."""
        verdicts = [p.remote_stopped for p in self.pods]
        if False in verdicts:
            return False
        return None if None in verdicts else True


class PodStream:
    """tcpdump in one pod's capture container, read into its lane until it ends."""

    def __init__(
        self,
        connector: ExecConnector,
        lane: Lane,
        tcpdump: TcpdumpOptions,
        limits: CaptureLimits,
        reporter: Reporter,
        stop: asyncio.Event,
        give_up: asyncio.Event | None = None,
        reconnect_for: float = 0.0,
    ) -> None:
        self.connector = connector
        self.lane = lane
        self.pod = lane.pod
        self.container = lane.container
        self.tcpdump = tcpdump
        self.limits = limits
        self.reporter = reporter
        self.stop = stop
        # Set by a second Ctrl-C: stop waiting for tcpdump (or a hung API server) at once.
        self.give_up = give_up or asyncio.Event()
        self.given_up = False
        self.report = TcpdumpReport()
        self.container_gone = False
        self.many = False  # several pods: progress lines name the pod
        self.reconnector = Reconnector(reconnect_for) if reconnect_for > 0 else None
        self.reconnecting = False
        # --compress: the pod's gzip members decoded into the lane (capture/compress.py).
        self.gzip: GzipStream | None = GzipStream(lane.feed) if tcpdump.compress else None
        self.session = self._session(limits.packet_count)

    def _session(self, packet_count: int | None) -> ExecStream:
        # The packet limit is tcpdump's own too (the pipeline enforces it across pods).
        argv = self.tcpdump.argv(packet_count)
        enter = self.pod.uid if self.pod.via is not None else None
        command = (compressed_capture_command if self.tcpdump.compress else capture_command)(
            self.container, argv, enter)
        return self.connector.open_stream(*self._exec_place(), command)

    def _exec_place(self) -> tuple[str, str, str]:
        """Namespace, pod and container where tcpdump runs: the pod's own capture container,
        or (--via-node) the capture pod on its node."""
        via = self.pod.via
        if via is not None:
            return via.namespace, via.pod, via.container
        return self.pod.namespace, self.pod.name, self.container

    def new_session(self) -> None:
        """A fresh exec of tcpdump for a reconnect (what is left of a packet limit)."""
        count = self.limits.packet_count
        if count is not None:
            count = max(1, count - self.lane.pipeline.packets)
        if self.gzip is not None:
            self.gzip.restart()  # a new tcpdump, a new gzip stream: the old one may end cut
        self.session = self._session(count)

    async def connect(self) -> None:
        await self.session.connect()

    async def run(self) -> PodCapture:
        result = PodCapture(self.pod, self.container, self.report)
        exec_result = await self._stream(result)
        self.report.finish()
        result.packets = self.lane.packets
        if self.gzip is not None:
            result.notes += compression_notes(self.gzip)
        if self.given_up:
            result.notes.append("stopped waiting (Ctrl-C again): tcpdump was not checked")
            result.remote_stopped = None
        else:
            result.remote_stopped = await self._until_given_up(
                self.verify_stopped(result.notes), "checking that tcpdump stopped")
        result.given_up = self.given_up
        result.error = self._ending_error(result, exec_result)
        return result

    def _stream_handlers(self) -> tuple[Callable[[memoryview], None], Callable[[bytes], None]]:
        """What tcpdump's stdout and stderr go to."""
        lane = self.lane
        pipeline = lane.pipeline
        stop = self.stop
        loop = asyncio.get_running_loop()
        stop_posted = False
        gzip = self.gzip
        feed = lane.feed if gzip is None else gzip.feed

        def on_stdout(chunk: memoryview) -> None:
            # In the stream's reader thread: the event loop only hears of a stop.
            nonlocal stop_posted
            feed(chunk)
            stopping = pipeline.stop_reason is not None or (gzip is not None and gzip.error)
            if stopping and not stop_posted:
                stop_posted = True
                loop.call_soon_threadsafe(stop.set)

        def on_stderr(data: bytes) -> None:
            was_listening = self.report.listening
            self.report.feed(data)
            if self.report.listening and not was_listening:
                # tcpdump's own word that packets now flow: users and scripts wait for it.
                self.reporter.progress(f"{self.who()}tcpdump {self.report.listening}")

        return on_stdout, on_stderr

    async def _stream(self, result: PodCapture) -> ExecResult | None:
        """Read tcpdump's stream into the lane, reconnecting when it drops, until it ends or
        the stop (tcpdump then told to stop). How the exec ended, when it said so."""
        on_stdout, on_stderr = self._stream_handlers()
        run_task = asyncio.create_task(self.session.run(on_stdout, on_stderr))
        stop_task = asyncio.create_task(self.stop.wait())
        counters_task = asyncio.create_task(self._ask_for_counters())
        try:
            while True:
                await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                lost = self._lost(run_task)
                if lost is None or self.stop.is_set() or self.reconnector is None:
                    break
                await self.session.close()
                if not await self.reconnector.resume(self, lost):
                    break
                run_task = asyncio.create_task(self.session.run(on_stdout, on_stderr))
            counters_task.cancel()
            if self.reconnector is not None:
                result.notes += [gap.note for gap in self.reconnector.gaps]
            return await self._end_stream(run_task, lost is not None, result)
        finally:
            stop_task.cancel()
            counters_task.cancel()
            if not self.given_up:
                await self.session.close()

    async def _end_stream(self, run_task: asyncio.Task[ExecResult], was_lost: bool,
                          result: PodCapture) -> ExecResult | None:
        """Stop tcpdump if it still streams; how its stream ended."""
        if not run_task.done():
            await self._stop_remote(run_task, result.notes)
        else:
            result.finished_by_itself = True
        if not run_task.done():  # the reader thread is still stuck: the stream is abandoned
            run_task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({run_task}, timeout=1.0)
            if not self.given_up:
                result.notes.append("the stream did not end after the stop; it was dropped")
            return None
        if was_lost and not self.stop.is_set():
            result.lost = True
        try:
            return run_task.result()
        except StreamLostError:
            result.lost = True
            return None

    def _ending_error(self, result: PodCapture,
                      exec_result: ExecResult | None) -> ZsniffError | None:
        """Why this pod's capture failed, if it did."""
        if self.gzip is not None and self.gzip.error is not None:
            return self.gzip.error
        if result.lost and not self.stop.is_set():
            return self._lost_error()
        if result.finished_by_itself and self.container_gone:
            return ZsniffError(
                f'pod "{self.pod.namespace}/{self.pod.name}" went away during the capture '
                "(deleted, evicted, or its capture container stopped)",
                "the capture file holds everything up to then; "
                f"kubectl get pod {self.pod.name} -n {self.pod.namespace} shows what happened",
                ExitStatus.POD_NOT_RUNNING,
            )
        if exec_result is not None and result.finished_by_itself and (
            exec_result.exit_code not in (0, None)
            or (exec_result.exit_code is None and exec_result.failure_message)
        ):
            if exec_result.exit_code is None:
                self.report.errors.append(exec_result.failure_message or "")
            return missing_compressor(self.report.errors) or tcpdump_failure(
                self.report, exec_result.exit_code, self.tcpdump, self.pod, self.container)
        return None

    def _lost_error(self) -> ZsniffError:
        tried = self.reconnector
        gave_up = ""
        if tried is not None:
            gave_up = f"; reconnecting for {tried.reconnect_for:g} s did not succeed" + (
                f" ({tried.last_error.message})" if tried.last_error is not None else "")
        return ZsniffError(
            "lost the connection to the API server after "
            f"{plural(self.lane.pipeline.packets, 'packet')}"
            + (f" (pod {self.pod.namespace}/{self.pod.name})" if self.many else "")
            + gave_up,
            "the capture file is valid up to the last whole packet; run again to continue"
            + ("" if tried is not None else " (or let zsniff reconnect: --reconnect-for)"),
            ExitStatus.STREAM_LOST,
        )

    def _lost(self, run_task: asyncio.Task[ExecResult]) -> ZsniffError | None:
        """The stream's loss, when the session ended that way (and not by a stop).

        A kubelet that dies mid-exec ends the API server's stream with a Success status (an
        empty error stream reads as success), as if tcpdump had finished: but a tcpdump that
        ends prints its counters last, so a success without them is a lost stream too.
        """
        if not run_task.done() or run_task.cancelled():
            return None
        err = run_task.exception()
        if isinstance(err, StreamLostError):
            return err
        if err is not None or self.stop.is_set():
            return None
        ended = run_task.result()
        if ended.exit_code == 0 and self.report.listening and not self.report.ended:
            return ZsniffError(
                f"the exec stream from {self.pod.namespace}/{self.pod.name} ended as a success "
                "before tcpdump did (closed by the server: its node's kubelet restarted?)",
                "", ExitStatus.STREAM_LOST)
        return None

    async def _ask_for_counters(self) -> None:
        """Every COUNTERS_INTERVAL, once this pod's tcpdump listens, ask for its counters."""
        while True:
            await asyncio.sleep(COUNTERS_INTERVAL)
            if self.report.listening is None or self.reconnecting or self.stop.is_set():
                continue
            with contextlib.suppress(Exception):  # a stream going away says so by itself
                await self.session.send_stdin(b"\n")

    def who(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name}: " if self.many else ""

    async def _until_given_up(self, work: Awaitable[T], what: str) -> T | None:
        """Await `work`; say after a second what is being waited for; a second Ctrl-C
        (give_up) abandons it and returns None."""
        task = asyncio.ensure_future(work)
        give_up = asyncio.create_task(self.give_up.wait())
        try:
            done, _ = await asyncio.wait({task}, timeout=SLOW_STOP_SECONDS)
            if not done:
                self.reporter.progress(
                    f"{self.who()}{what} (the API server is slow to answer; "
                    "Ctrl-C again to stop waiting)")
                await asyncio.wait({task, give_up}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            self.given_up = True
            task.cancel()
            return None
        finally:
            give_up.cancel()

    async def _stop_remote(self, run_task: asyncio.Task[ExecResult],
                           notes: list[str]) -> None:
        """Ask tcpdump to stop and keep reading until it has flushed everything."""
        self.lane.pipeline.outputs_stopping()

        async def stop_and_drain() -> None:
            try:
                closed = await self.session.close_stdin()
            except Exception:
                closed = False
            if not closed and self.report.pid is not None:
                await self._kill("TERM")
            done, _ = await asyncio.wait({run_task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                notes.append("tcpdump did not stop within the grace period; it was killed")
                await self.session.close()
                await asyncio.wait({run_task}, timeout=STOP_GRACE_SECONDS)

        await self._until_given_up(
            stop_and_drain(),
            f"waiting up to {STOP_GRACE_SECONDS:g} s for tcpdump to stop and its last packets",
        )

    async def _in_container(self, script: str, *args: str) -> int:
        # The shell's builtin kill: images need not ship a kill binary.
        return await self.connector.run_command(
            *self._exec_place(),
            ["sh", "-c", script, "zsniff", *args], timeout=15,
        )

    async def _kill(self, signal_name: str) -> int | None:
        if self.report.pid is None:
            return None
        try:
            return await self._in_container(f"kill -{signal_name} \"$1\"", str(self.report.pid))
        except ZsniffError:
            return None

    async def verify_stopped(self, notes: list[str]) -> bool | None:
        """Check that tcpdump is gone in the pod; kill it if not. None: could not check."""
        if self.report.pid is None:
            return None
        for attempt in range(3):
            try:
                code = await self._in_container('kill -0 "$1" 2>/dev/null', str(self.report.pid))
            except ZsniffError as err:
                if err.status in (ExitStatus.NOT_FOUND, ExitStatus.POD_NOT_RUNNING):
                    # The pod or its capture container is gone, and every process with it.
                    self.container_gone = True
                    return True
                notes.append(f"could not verify that tcpdump stopped: {err.message}")
                return None
            if code != 0:
                return True
            await self._kill("TERM" if attempt == 0 else "KILL")
            await asyncio.sleep(0.5)
        notes.append(f"tcpdump (pid {self.report.pid}) still runs in the pod")
        return False


def drops_warning(dropped: int, before: int, streams: list[PodStream]) -> str:
    """Said while capturing, when the kernel starts dropping (again)."""
    where = ""
    if len(streams) > 1:
        where = " (" + ", ".join(f"{s.pod.namespace}/{s.pod.name}: {s.report.dropped:,}"
                                 for s in streams if s.report.dropped) + ")"
    buffer_kib = streams[0].tcpdump.buffer_kib
    return (f"warning: the kernel dropped {plural(dropped, 'packet')}{where}"
            + (f", {dropped - before:,} since the last warning" if before else "")
            + ": tcpdump did not read them in time, because the stream to here is slower "
            "than the traffic, or the pod is short of CPU; a narrower filter, a smaller "
            f"--snaplen or a larger -B (now {buffer_kib:,} KiB) helps")


class CaptureRun:
    """Captures one or more pods at once into one pipeline, until a stop."""

    def __init__(
        self,
        endpoint: ApiEndpoint | None,
        pipeline: OutputPipeline,
        tcpdump: TcpdumpOptions,
        limits: CaptureLimits,
        reporter: Reporter,
        reconnect_for: float = 0.0,
        *,
        connector: ExecConnector | None = None,
    ) -> None:
        """`endpoint`: the API server whose exec websocket the pods are captured through;
        None only with a `connector` of one's own (a test's scripted streams)."""
        if connector is None:
            if endpoint is None:
                raise ValueError("CaptureRun needs an endpoint or a connector")
            connector = WebSocketConnector(endpoint)
        self.connector = connector
        self.pipeline = pipeline
        self.limits = limits
        self.reporter = reporter
        self._stop = asyncio.Event()
        self._give_up = asyncio.Event()
        self._signal_reason: StopReason | None = None
        self._signals = 0
        self.tcpdump = tcpdump
        self.streams = [
            PodStream(connector, lane, tcpdump, limits, reporter, self._stop, self._give_up,
                      reconnect_for)
            for lane in pipeline.lanes
        ]
        for stream in self.streams:
            stream.many = len(self.streams) > 1
        # Following a workload: pods join while capturing (join), and one that goes away ends
        # its lane with a note while others are left. Set before run(); `leaving` is the
        # follower's set of (namespace, pod) that are going or gone.
        self.following = False
        self.leaving: set[tuple[str, str]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[PodCapture]] = []
        self._joined = asyncio.Event()
        self._joining = 0
        self._joining_lock = threading.Lock()
        # Called once every first stream is connected (the loop runs): starts the following.
        self.on_started: Callable[[], None] | None = None

    def request_stop(self, reason: StopReason) -> None:
        if self._signal_reason is None:
            self._signal_reason = reason
        self._stop.set()

    def _on_signal(self, reason: StopReason) -> None:
        self._signals += 1
        if self._signals > 1 and not self._give_up.is_set():
            self.reporter.progress("not waiting any longer")
            self._give_up.set()
        self.request_stop(reason)

    async def _connect_all(self) -> None:
        connected: list[PodStream] = []
        try:
            for stream in self.streams:
                await stream.connect()
                connected.append(stream)
        except BaseException:
            # tcpdump already runs in the pods connected so far: stop those before failing.
            self._stop.set()
            await asyncio.gather(
                *(s.run() for s in connected), return_exceptions=True
            )
            raise

    def joining(self, delta: int) -> None:
        """A pod is being prepared to join (+1), or that is over (-1): the capture waits for
        it even when every other pod has gone. From any thread."""
        with self._joining_lock:
            self._joining += delta

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def live_pods(self) -> int:
        return sum(not t.done() for t in self._tasks)

    async def join(self, lane: Lane) -> bool:
        """Start capturing a pod that joined the pipeline while capturing. False: the
        capture is stopping, the pod is not joined."""
        if self._stop.is_set():
            return False
        stream = PodStream(self.connector, lane, self.tcpdump, self.limits, self.reporter,
                           self._stop, self._give_up)
        stream.many = True
        await stream.connect()
        self.streams.append(stream)
        self._tasks.append(asyncio.create_task(stream.run()))
        self._joined.set()
        return True

    async def run(self) -> CaptureSummary:
        loop = asyncio.get_running_loop()
        self.loop = loop
        started = time.monotonic()
        if self.following:
            for stream in self.streams:
                stream.many = True
        await self._connect_all()
        if self.on_started is not None:
            self.on_started()
        installed = self._install_signal_handlers(loop)
        duration = self.limits.duration
        timer = loop.call_later(duration, self.request_stop, StopReason.DURATION) \
            if duration else None
        stats_task = asyncio.create_task(self._report_stats(started))
        try:
            tasks = self._tasks
            tasks.extend(asyncio.create_task(s.run()) for s in self.streams)
            await self._until_every_pod_ended()
            self.pipeline.finish()  # packets still in the reorder window
            pods = [t.result() for t in tasks]
            for stream, pod in zip(self.streams, pods, strict=True):
                pod.packets = stream.lane.packets
        finally:
            self._stop.set()  # nothing joins a capture that is over
            if timer is not None:
                timer.cancel()
            stats_task.cancel()
            for installed_signal in installed:
                loop.remove_signal_handler(installed_signal)
        return self._summary(pods, started)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        """Ctrl-C and SIGTERM stop the capture (a second one stops the waiting)."""
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
        return installed

    async def _until_every_pod_ended(self) -> None:
        """Wait for every pod's capture, also those that join meanwhile; one that fails while
        others go on is said at once."""
        tasks = self._tasks
        seen: set[asyncio.Task[PodCapture]] = set()
        while True:
            pending = {t for t in tasks if t not in seen}
            if not pending and not (self._joining and not self._stop.is_set()):
                break
            self._joined.clear()
            woken = asyncio.create_task(self._joined.wait())
            done, _ = await asyncio.wait(pending | {woken}, timeout=None if pending else 1.0,
                                         return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            for task in [t for t in pending if t in done]:
                seen.add(task)
                capture = task.result()
                others = any(not t.done() for t in tasks) or self._joining
                if capture.error is not None and not self._stop.is_set() and others:
                    await self._lane_ended(capture)

    async def _lane_ended(self, capture: PodCapture) -> None:
        """One pod's capture ended early while others go on: say so now. A followed pod that
        went away (a replica deleted, a rollout) is a note, not the capture's failure: its
        stream ends however the kill reaches it (tcpdump killed, exit 137; the exec stream
        cut), so what tells is the pod's deletion, which the API states before kubelet stops
        the containers (waited for a moment, in case the watch is behind)."""
        who = f"{capture.pod.namespace}/{capture.pod.name}"
        key = (capture.pod.namespace, capture.pod.name)
        assert capture.error is not None
        deadline = time.monotonic() + LEAVING_WAIT_SECONDS
        while self.following and key not in self.leaving and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.following and key in self.leaving:
            note = (f"went away; its lane ends here ({plural(capture.packets, 'packet')}), "
                    "the capture goes on")
            capture.notes.append(note)
            capture.error = None
            self.reporter.progress(f"{who}: {note}")
            return
        self.reporter.progress(f"{who}: {capture.error.message}")

    def _summary(self, pods: list[PodCapture], started: float) -> CaptureSummary:
        pipeline = self.pipeline
        reason = pipeline.stop_reason or self._signal_reason
        lost = any(p.lost for p in pods)
        if reason is None:
            reason = StopReason.STREAM_LOST if lost else StopReason.FINISHED
        error = pipeline.failure or next((p.error for p in pods if p.error is not None), None)
        if error is None:
            error = self._left_behind(pods, reason)
        notes = list(pipeline.notes)
        for p in pods:
            prefix = f"{p.pod.namespace}/{p.pod.name}: " if len(pods) > 1 else ""
            notes += [prefix + note for note in p.notes]
        return CaptureSummary(
            pods=pods,
            packets=pipeline.packets,
            data_bytes=pipeline.data_bytes,
            output_bytes=pipeline.output_bytes,
            seconds=time.monotonic() - started,
            reason=reason,
            exit_status=error.status if error else EXIT_FOR_REASON[reason],
            names_written=pipeline.names_written,
            closed_sinks=pipeline.closed_sinks,
            notes=notes,
            sink_results=[],
            error=error,
        )

    def _left_behind(self, pods: list[PodCapture], reason: StopReason) -> ZsniffError | None:
        """The last word when tcpdump may still run in a pod after we stopped it."""
        unsure = [p for p in pods if not p.finished_by_itself and not p.lost
                  and p.remote_stopped is not True and p.report.pid is not None]
        if not unsure:
            return None
        where = ", ".join(f"{p.pod.namespace}/{p.pod.name} (container {p.container})"
                          for p in unsure)
        why = ("you stopped waiting" if any(p.given_up for p in unsure)
               else "the API server did not confirm it")
        first = unsure[0]
        return ZsniffError(
            f"tcpdump may still run in {where}: {why}",
            "it stops once the API server drops the exec connection (its stdin closes); the "
            f"capture container then exits after --idle-lifetime. Check with: kubectl get pod "
            f"{first.pod.name} -n {first.pod.namespace} -o jsonpath="
            "'{.status.ephemeralContainerStatuses}'",
            EXIT_FOR_REASON[reason],
        )

    async def _report_stats(self, started: float) -> None:
        warned_at: float | None = None
        warned_drops = 0
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            counts = [s.report.dropped for s in self.streams]
            dropped = None if all(c is None for c in counts) else sum(c or 0 for c in counts)
            reconnecting = sum(s.reconnecting for s in self.streams)
            now = time.monotonic()
            self.reporter.stats(self.pipeline.packets, self.pipeline.data_bytes, now - started,
                                dropped, reconnecting)
            if dropped and dropped > warned_drops and (
                    warned_at is None or now - warned_at >= DROPS_WARNING_EVERY):
                self.reporter.progress(drops_warning(dropped, warned_drops, self.streams))
                warned_at, warned_drops = now, dropped
            # A reader that went away is noticed now, not at the next packet, which on a
            # quiet pod may never come.
            self.pipeline.flush_due()
            if self.pipeline.check_readers() and not self._stop.is_set():
                self._stop.set()
