"""A connector that plays scripted exec streams in place of the API server's websocket: what
tcpdump in a pod would say on stderr and write on stdout, a stream cut, an exit status. No
cluster, no network, no thread.

Each `open_stream` takes the next script; `run_command` answers the capture's `kill -0 PID`
(is that tcpdump still running?) and `kill -TERM PID` from what the scripts did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
from kubectl_zsniff.kube.status import ApiStatus
from kubectl_zsniff.wire.execws import ExecResult, StreamLostError
from tests.unit.capture_fixtures import udp_frame


@dataclass(frozen=True)
class Stderr:
    text: bytes


@dataclass(frozen=True)
class Stdout:
    data: bytes


@dataclass(frozen=True)
class Drop:
    """The stream is cut (no status frame): the API server or the network went away."""


@dataclass(frozen=True)
class UntilStopped:
    """tcpdump goes on until its stdin closes (v5) or it is killed (v4 has no stdin close)."""


@dataclass(frozen=True)
class Exit:
    """The status frame: tcpdump (the wrapper script) ended with this code."""

    code: int


@dataclass(frozen=True)
class Call:
    """Something the test does at this point of the stream (a Ctrl-C)."""

    action: Callable[[], None]


Step = Stderr | Stdout | Drop | UntilStopped | Exit | Call


def tcpdump_start(pid: int, interface: str = "eth0") -> list[Step]:
    return [Stderr(f"zsniff-pid {pid}\n".encode()),
            Stderr(f"tcpdump: listening on {interface}, link-type EN10MB (Ethernet), "
                   "snapshot length 262144 bytes\n".encode())]


def tcpdump_end(captured: int) -> list[Step]:
    return [Stderr(f"{captured} packets captured\n{captured} packets received by filter\n"
                   "0 packets dropped by kernel\n".encode()), Exit(0)]


def packets(numbers: range) -> bytes:
    """pcap records of UDP datagrams whose payload is their number (4 bytes, big endian)."""
    return b"".join(
        encode_pcap_record(1_700_000_000 + n, 0,
                           udp_frame("10.244.1.1", "10.244.1.9", n.to_bytes(4, "big")))
        for n in numbers)


PCAP_HEADER = encode_pcap_header(1)


def _status(code: int) -> ApiStatus:
    if code == 0:
        return ApiStatus("Success")
    return ApiStatus("Failure", f"command terminated with non-zero exit code: {code}",
                     "NonZeroExitCode", 500,
                     {"causes": [{"reason": "ExitCode", "message": str(code)}]})


class FakeStream:
    """One scripted exec of tcpdump (an ExecStream)."""

    def __init__(self, connector: FakeConnector, command: Sequence[str],
                 script: Sequence[Step]) -> None:
        self.connector = connector
        self.command = list(command)
        self.script = list(script)
        self.pid: int | None = None
        self.running = False
        self.stdin: list[bytes] = []
        self._stopped = asyncio.Event()  # stdin closed or killed
        self._closed = asyncio.Event()  # the client closed the stream
        self.bytes_stdout = 0

    async def connect(self) -> None:
        self.connector.events.append("connect")

    async def run(self, on_stdout: Callable[[memoryview], object],
                  on_stderr: Callable[[bytes], object]) -> ExecResult:
        self.running = True
        try:
            for step in self.script:
                await asyncio.sleep(0)  # as a real stream, one frame at a time
                if isinstance(step, Stderr):
                    self._note_pid(step.text)
                    on_stderr(step.text)
                elif isinstance(step, Stdout):
                    self.bytes_stdout += len(step.data)
                    on_stdout(memoryview(step.data))
                elif isinstance(step, Call):
                    step.action()
                elif isinstance(step, UntilStopped):
                    if not await self._until_stopped():
                        return ExecResult(None, None, self.bytes_stdout, 0, complete=False,
                                          closed_by_client=True)
                elif isinstance(step, Drop):
                    raise StreamLostError(
                        f'the exec stream from pod "{self.command[0]}/{self.command[1]}" ended '
                        f"before the command "
                        f"did, after {self.bytes_stdout} bytes of output (closed by the server)",
                        ExecResult(None, None, self.bytes_stdout, 0, complete=False))
                else:
                    return ExecResult(step.code, _status(step.code), self.bytes_stdout, 0,
                                      complete=True)
            raise AssertionError("a script ends with Exit or Drop")
        finally:
            self.running = False

    async def _until_stopped(self) -> bool:
        """False: the client closed the stream first."""
        stopped = asyncio.create_task(self._stopped.wait())
        closed = asyncio.create_task(self._closed.wait())
        await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        closed.cancel()
        return self._stopped.is_set()

    def _note_pid(self, text: bytes) -> None:
        if text.startswith(b"zsniff-pid "):
            self.pid = int(text.split()[1])

    async def send_stdin(self, data: bytes) -> None:
        self.stdin.append(data)

    async def close_stdin(self) -> bool:
        if not self.connector.stdin_close:
            return False  # channel protocol v4
        self.connector.events.append("stdin closed")
        self._stopped.set()
        return True

    async def close(self) -> None:
        self._closed.set()

    def kill(self) -> None:
        self._stopped.set()


@dataclass
class FakeConnector:
    """Hands out the scripts in order (one per connect: the first, then each reconnect)."""

    scripts: list[list[Step]]
    stdin_close: bool = True  # False: an API server that speaks only channel protocol v4
    streams: list[FakeStream] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    command_places: list[tuple[str, str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def open_stream(self, namespace: str, pod: str, container: str,
                    command: Sequence[str]) -> FakeStream:
        assert self.scripts, "the capture connected more often than scripted"
        stream = FakeStream(self, [namespace, pod, container, *command], self.scripts.pop(0))
        self.streams.append(stream)
        return stream

    async def run_command(self, namespace: str, pod: str, container: str,
                          command: Sequence[str], timeout: float) -> int:
        script, pid = command[2], int(command[-1])
        self.commands.append([script, str(pid)])
        self.command_places.append((namespace, pod, container))
        mine = [s for s in self.streams if s.pid == pid]
        if script.startswith("kill -0"):
            return 0 if any(s.running for s in mine) else 1
        self.events.append(" ".join(script.split()[:2]) + f" {pid}")  # kill -TERM, -KILL
        for stream in mine:
            stream.kill()
        return 0

    @property
    def tcpdump_argv(self) -> list[list[str]]:
        """Each stream's tcpdump arguments (after the wrapper script's own)."""
        return [s.command[s.command.index("-i"):] for s in self.streams]
