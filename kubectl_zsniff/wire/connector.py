"""The seam between the capture and the exec websocket: what the capture needs of "run a
command in a container", so that a test can put scripted channel data in its place.

The capture (capture/run.py) opens one long exec per pod (tcpdump, fed on stdin, read until
it ends) and runs short commands beside it (`kill -0 PID`). `WebSocketConnector` does both over
the API server's exec websocket (execws.py); a test hands `CaptureRun` its own connector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from kubectl_zsniff.wire.endpoint import ApiEndpoint
from kubectl_zsniff.wire.execws import ExecResult, ExecSession, exec_capture_output

__all__ = ["ExecConnector", "ExecStream", "WebSocketConnector"]


class ExecStream(Protocol):
    """One exec of a command: connect, then read it (see ExecSession for the contract: a
    stream that ends without an exit status raises StreamLostError)."""

    async def connect(self) -> None: ...

    async def run(
        self,
        on_stdout: Callable[[memoryview], object],
        on_stderr: Callable[[bytes], object],
    ) -> ExecResult: ...

    async def send_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> bool: ...

    async def close(self) -> None: ...


class ExecConnector(Protocol):
    """Opens exec streams into containers and runs short commands in them."""

    def open_stream(self, namespace: str, pod: str, container: str,
                    command: Sequence[str]) -> ExecStream:
        """A stream with stdin, not connected yet."""
        ...

    async def run_command(self, namespace: str, pod: str, container: str,
                          command: Sequence[str], timeout: float) -> int:
        """The command's exit code; raises ZsniffError when it cannot run."""
        ...


class WebSocketConnector:
    """The real thing: the API server's exec websocket."""

    def __init__(self, endpoint: ApiEndpoint) -> None:
        self.endpoint = endpoint

    def open_stream(self, namespace: str, pod: str, container: str,
                    command: Sequence[str]) -> ExecSession:
        return ExecSession(self.endpoint, namespace, pod, container, command, stdin=True)

    async def run_command(self, namespace: str, pod: str, container: str,
                          command: Sequence[str], timeout: float) -> int:
        code, _, _ = await exec_capture_output(self.endpoint, namespace, pod, container,
                                               command, timeout=timeout)
        return code
