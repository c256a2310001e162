"""Exec into a pod over the Kubernetes exec websocket (channel protocol v5, falling back to v4).

Why not the official client's ``stream()`` helper: it copies its whole buffer on every frame and
decodes bytes as UTF-8 unless told otherwise (see docs/kubernetes-facts.md): a capture stream
needs binary-exact, copy-light reading. The websocket itself is ``websocket.py`` (a thread reads
TLS records straight into one buffer). The official client still owns kubeconfig and auth;
``kube.client.endpoint_from_configuration`` turns them into an ``ApiEndpoint`` (endpoint.py).

Wire format (both protocols): every websocket message is binary; byte 0 is the channel
(0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close-a-channel, v5 only); the rest is the
payload. Channel 3 carries one ``metav1.Status`` JSON document, the last message of the stream.

Behaviour choices (callers rely on them):

* ``ExecSession.run`` reads until the server closes the websocket, not just until the status
  frame: stdout frames that arrive after the status are still delivered (kubectl issue 1361
  lost the tail of large streams by stopping early). After the status it waits at most
  ``status_grace`` seconds for the close, then closes itself.
* A stream that ends without a status frame raises ``StreamLostError`` (exit status
  STREAM_LOST) carrying an ``ExecResult`` with the byte counts received before the cut -- unless
  the end was asked for with ``ExecSession.close()``, in which case ``run`` returns normally
  with ``complete=False`` and ``closed_by_client=True``.
* A failure *status* (non-zero exit, executable not found, ...) is not an exception in ``run``:
  it is returned in ``ExecResult.status`` for the caller to classify (tcpdump's own errors mean
  different things to different callers).
* Environment proxy variables are NOT honoured; only ``ApiEndpoint.proxy`` (kubeconfig
  ``proxy-url``, http:// only) is. This matches the official client's REST calls, which
  ignore the environment as well.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from kubectl_zsniff import __version__
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.status import (
    ApiStatus,
    api_refusal,
    unreachable_error,
    unreachable_kind,
)
from kubectl_zsniff.wire.endpoint import ApiEndpoint, exec_url, unsupported_proxy
from kubectl_zsniff.wire.websocket import OP_BINARY, CloseInfo, ProtocolError, WebSocket

T = TypeVar("T")
P = ParamSpec("P")

PROTOCOL_V5 = "v5.channel.k8s.io"
PROTOCOL_V4 = "v4.channel.k8s.io"
SUBPROTOCOLS = (PROTOCOL_V5, PROTOCOL_V4)

CH_STDIN = 0
CH_STDOUT = 1
CH_STDERR = 2
CH_STATUS = 3
CH_RESIZE = 4
CH_CLOSE = 255

_STDIN_PREFIX = bytes([CH_STDIN])
_CLOSE_STDIN = bytes([CH_CLOSE, CH_STDIN])


@dataclass(frozen=True)
class ExecResult:
    """How an exec stream ended."""

    exit_code: int | None  # 0 on Success, N on NonZeroExitCode, None otherwise
    status: ApiStatus | None  # the Kubernetes Status from channel 3, if one came
    bytes_stdout: int
    bytes_stderr: int
    complete: bool  # a status frame was seen
    closed_by_client: bool = False  # ExecSession.close() ended the stream

    @property
    def failure_message(self) -> str | None:
        """The Status message when the command failed or could not start, else None."""
        if self.status is None or self.status.succeeded:
            return None
        return self.status.message or self.status.reason or "exec failed"


class StreamLostError(ZsniffError):
    """The exec stream ended before the status frame: the remote command's fate is unknown."""

    status = ExitStatus.STREAM_LOST

    def __init__(self, message: str, result: ExecResult, hint: str = "") -> None:
        super().__init__(
            message,
            hint or "the capture file is valid up to the last whole packet received",
        )
        self.result = result

    @property
    def bytes_stdout(self) -> int:
        return self.result.bytes_stdout


class ExecFailedError(ZsniffError):
    """A short command could not run (Status Failure other than a non-zero exit code)."""

    def __init__(self, message: str, result: ExecResult, hint: str = "") -> None:
        super().__init__(message, hint)
        self.result = result


class ExecSession:
    """One exec websocket: ``connect()``, then ``run()`` (and ``send_stdin`` from elsewhere).

    Use as ``async with ExecSession(...) as s: result = await s.run(out, err)``.

    The stream is read by a thread of its own (see ``websocket``): ``run``'s ``on_stdout`` is
    called in that thread, ``on_stderr`` in the event loop.
    """

    def __init__(
        self,
        endpoint: ApiEndpoint,
        namespace: str,
        pod: str,
        container: str | None,
        command: Sequence[str],
        *,
        stdin: bool = False,
        tty: bool = False,
        open_timeout: float = 30.0,
        ping_interval: float | None = 20.0,
        # Generous: the server may be slow to answer while it pushes megabytes of capture.
        ping_timeout: float | None = 60.0,
        close_timeout: float = 5.0,
        status_grace: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.command = tuple(command)
        self.url = exec_url(endpoint, namespace, pod, container, command, stdin=stdin, tty=tty)
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._status_grace = status_grace
        self._ws: WebSocket | None = None
        self._reader_done: asyncio.Event | None = None
        self._closing = False
        self.protocol: str | None = None

    def __repr__(self) -> str:
        return (
            f"ExecSession({self.namespace}/{self.pod} container={self.container!r} "
            f"protocol={self.protocol!r})"
        )

    @property
    def target(self) -> str:
        name = f'pod "{self.namespace}/{self.pod}"'
        return f'{name} container "{self.container}"' if self.container else name

    async def __aenter__(self) -> ExecSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the websocket; handshake failures become ``ZsniffError`` with a hint."""
        from kubectl_zsniff.wire import websocket

        endpoint = self.endpoint
        refused = unsupported_proxy(endpoint.proxy)
        if refused is not None:
            raise refused
        secure = self.url.startswith("wss://")
        try:
            self._ws = await _blocking(
                websocket.connect,
                self.url,
                headers=endpoint.headers,
                subprotocols=SUBPROTOCOLS,
                ssl_context=(endpoint.ssl_context or ssl.create_default_context())
                if secure else None,
                server_hostname=endpoint.server_hostname,
                proxy=endpoint.proxy,
                timeout=self._open_timeout,
                user_agent=f"kubectl-zsniff/{__version__}",
            )
        except Exception as exc:
            mapped = _handshake_error(exc, self)
            if mapped is None:
                raise
            raise mapped from None  # the cause may carry request details: keep it out
        self.protocol = self._ws.subprotocol or PROTOCOL_V4
        self._closing = False

    async def run(
        self,
        on_stdout: Callable[[memoryview], object],
        on_stderr: Callable[[bytes], object],
    ) -> ExecResult:
        """Deliver stdout/stderr until the server closes; return how the command ended.

        ``on_stdout`` runs in the reader thread and gets a view of the read buffer: it must
        copy what it keeps beyond the call. ``on_stderr`` runs in the event loop. Raises
        ``StreamLostError`` if the stream ends without a status frame (unless ``close()``
        was called); whatever ``on_stdout`` raises ends the stream and is raised here.
        """
        ws = self._ws
        if ws is None:
            raise RuntimeError("ExecSession.run() before connect()")
        done = self._reader_done = asyncio.Event()
        reader = _ChannelReader(ws, asyncio.get_running_loop(), on_stdout, on_stderr,
                                self._status_grace)
        try:
            info = await _blocking(self._read_until_closed, ws, reader)
        except asyncio.CancelledError:
            ws.abort()
            raise
        except ProtocolError as exc:
            info = CloseInfo(None, f"protocol error: {exc}", by_client=False)
        finally:
            done.set()
        status = reader.status
        n_out, n_err = reader.bytes_stdout, reader.bytes_stderr
        if status is None and not (self._closing or info.by_client):
            result = ExecResult(None, None, n_out, n_err, complete=False)
            raise StreamLostError(
                f"the exec stream from {self.target} ended before the command did, "
                f"after {n_out} bytes of output ({info.describe()})",
                result,
            )
        return ExecResult(
            None if status is None else status.exit_code,
            status,
            n_out,
            n_err,
            complete=status is not None,
            closed_by_client=status is None,
        )

    def _read_until_closed(self, ws: WebSocket, reader: _ChannelReader) -> CloseInfo:
        try:
            return ws.read_messages(
                reader.on_data,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=self._close_timeout,
            )
        finally:
            ws.close()

    async def send_stdin(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to the command's stdin (the session must have been opened with stdin)."""
        ws = self._connected("send_stdin")
        await _blocking(ws.send, OP_BINARY, _STDIN_PREFIX + bytes(data))

    async def close_stdin(self) -> bool:
        """Signal EOF on stdin. Returns False on v4, which has no way to do it (only closing
        the whole websocket does, which also ends stdout)."""
        ws = self._connected("close_stdin")
        if self.protocol != PROTOCOL_V5:
            return False
        await _blocking(ws.send, OP_BINARY, _CLOSE_STDIN)
        return True

    async def close(self) -> None:
        """Close the websocket cleanly; a ``run()`` in another task then returns promptly.

        Idempotent. Ephemeral containers get no EOF from this: the remote command keeps
        running unless it stops by itself or is killed.
        """
        ws = self._ws
        if ws is None:
            return
        self._closing = True
        done = self._reader_done
        if done is None:  # never read: nothing to wait for
            await _blocking(ws.request_close, 1000, self._close_timeout)
            ws.abort()
            ws.close()
            return
        if done.is_set():
            return
        await _blocking(ws.request_close, 1000, self._close_timeout)
        try:
            await asyncio.wait_for(done.wait(), self._close_timeout + 1.0)
        except (asyncio.TimeoutError, TimeoutError):
            ws.abort()

    def _connected(self, what: str) -> WebSocket:
        if self._ws is None:
            raise RuntimeError(f"ExecSession.{what}() before connect()")
        return self._ws


async def _blocking(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call in a daemon thread of its own.

    Not ``asyncio.to_thread``: ``asyncio.run`` joins the default executor's threads on its way
    out, so a Ctrl-C during a slow connect would wait for the connect's timeout. A websocket
    that opens after its caller gave up is dropped at once.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: tuple[T] | BaseException) -> None:
        if future.cancelled():
            _drop_websocket(outcome)
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[0])

    def work() -> None:
        outcome: tuple[T] | BaseException
        try:
            outcome = (func(*args, **kwargs),)
        except BaseException as exc:
            outcome = exc
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            _drop_websocket(outcome)

    threading.Thread(target=work, name=f"zsniff-{getattr(func, '__name__', 'call')}",
                     daemon=True).start()
    return await future


def _drop_websocket(outcome: tuple[object] | BaseException) -> None:
    """A websocket opened for nobody: closed at once."""
    if isinstance(outcome, tuple) and isinstance(outcome[0], WebSocket):
        outcome[0].abort()
        outcome[0].close()


class _ChannelReader:
    """Splits websocket messages into the exec channels (runs in the reader thread)."""

    def __init__(
        self,
        ws: WebSocket,
        loop: asyncio.AbstractEventLoop,
        on_stdout: Callable[[memoryview], object],
        on_stderr: Callable[[bytes], object],
        status_grace: float,
    ) -> None:
        self.ws = ws
        self.loop = loop
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self.status_grace = status_grace
        self.channel = -1  # -1: the message's channel byte has not come yet
        self.bytes_stdout = 0
        self.bytes_stderr = 0
        self.status: ApiStatus | None = None
        self._status_text = bytearray()

    def on_data(self, piece: memoryview, first: bool, final: bool) -> None:
        if first:
            self.channel = -1
        channel = self.channel
        if channel == -1:
            if not piece:
                return
            channel = self.channel = piece[0]
            piece = piece[1:]
        if channel == CH_STDOUT:
            if piece:
                self.bytes_stdout += len(piece)
                self.on_stdout(piece)
        elif channel == CH_STDERR:
            if piece:
                self.bytes_stderr += len(piece)
                self.loop.call_soon_threadsafe(self.on_stderr, bytes(piece))
        elif channel == CH_STATUS and self.status is None:
            self._status_text += piece
            if final:
                self.status = ApiStatus.parse(self._status_text)
                # Whatever still comes is read until the server closes, but not forever.
                self.ws.close_after(self.status_grace)
        # CH_CLOSE (v5: the server closed one of its channels) and unknown channels need no
        # action: the status frame and the websocket close end the stream.


def _handshake_error(exc: BaseException, session: ExecSession) -> ZsniffError | None:
    """Map a failed websocket handshake to the project's error family (None: not ours)."""
    from kubectl_zsniff.wire.websocket import HandshakeFailed, HandshakeRejected, ProxyFailed

    host = session.endpoint.host
    if isinstance(exc, HandshakeRejected):
        code = exc.status_code
        if code < 400:
            return ZsniffError(
                f"the API server {host} answered HTTP {code} instead of upgrading to a websocket",
                "is the kubeconfig server URL the API server itself (not a proxy or dashboard)?",
                status=ExitStatus.ERROR,
            )
        return api_refusal(code, ApiStatus.parse(exc.body), "create pods/exec",
                           namespace=session.namespace, pod=session.pod, server=host)
    kind = unreachable_kind(exc)
    if kind is not None:
        return unreachable_error(kind, _failure_detail(exc), server=host)
    if isinstance(exc, HandshakeFailed):
        return ZsniffError(
            f"the API server {host} did not complete the websocket handshake: {exc}",
            "check proxy-url in your kubeconfig" if isinstance(exc, ProxyFailed) else
            "is the kubeconfig server URL the API server itself, with the right scheme?",
            status=ExitStatus.UNREACHABLE,
        )
    return None


def _failure_detail(exc: BaseException) -> str:
    """What a connection failure says, in the words of its kind."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


async def exec_capture_output(
    endpoint: ApiEndpoint,
    namespace: str,
    pod: str,
    container: str | None,
    command: Sequence[str],
    *,
    timeout: float = 30.0,
    stdin_data: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a short command (e.g. ``kill -0 PID``) and return (exit_code, stdout, stderr).

    Raises ``ExecFailedError`` if the command could not run at all (e.g. executable not found),
    ``StreamLostError`` if the stream was cut, ``ZsniffError(UNREACHABLE)`` on timeout.
    """
    out = bytearray()
    err = bytearray()
    session = ExecSession(
        endpoint,
        namespace,
        pod,
        container,
        command,
        stdin=stdin_data is not None,
        open_timeout=timeout,
    )

    async def _go() -> ExecResult:
        async with session:
            if stdin_data is not None:
                await session.send_stdin(stdin_data)
                await session.close_stdin()
            return await session.run(out.extend, err.extend)

    try:
        result = await asyncio.wait_for(_go(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise ZsniffError(
            f"`{' '.join(command)}` in {session.target} did not finish within {timeout:g} s",
            "the API server or the node may be slow; retry",
            status=ExitStatus.UNREACHABLE,
        ) from None
    if result.exit_code is None:
        raise ExecFailedError(
            f"cannot run `{' '.join(command)}` in {session.target}: "
            f"{result.failure_message or 'no exit status'}",
            result,
        )
    return result.exit_code, bytes(out), bytes(err)
