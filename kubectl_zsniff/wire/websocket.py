"""A client websocket (RFC 6455) read by one thread straight from a TLS socket.

Why not the ``websockets`` package: measured on a 1 GB exec stream (bench/RESULTS.md), its
asyncio client spends ~1.1-1.3 CPU s per GB between the socket and a message (asyncio's
MemoryBIO copy, a stream buffer copy, a frame slice and a message join) and its threaded
client more; the capture stream needs none of that. Here a record is decrypted by OpenSSL
straight into one reusable buffer (with the GIL released), frames are parsed in place, and
payload pieces are handed to the caller as views of that buffer: no copy in Python at all.

Scope: what the Kubernetes exec endpoint needs. No extensions (none is offered), no text
decoding, client frames masked as the RFC requires. Messages are delivered as they arrive,
piece by piece, never assembled: a fragmented or huge message costs no memory.

Threads: ``read_messages`` runs in one thread and is the only reader; ``send`` may be called
from any thread. One lock serialises every TLS operation (OpenSSL does not allow an SSL
object to be used by two threads at once); the socket is non-blocking, so the lock is never
held while waiting for the network.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024  # an HTTP response head larger than this is not an API server's
_MAX_ERROR_BODY = 256 * 1024  # enough for any Status document
_BATCH = 256 * 1024  # parse (and deliver) after this much, even if more is waiting

#: on_data(piece, first, final): a piece of a data message; ``first`` for the message's first
#: piece, ``final`` for its last. ``piece`` is a view of the read buffer, valid during the call.
DataHandler = Callable[[memoryview, bool, bool], None]


class HandshakeRejected(Exception):
    """The server answered the upgrade request with another HTTP status."""

    def __init__(self, status_code: int, reason: str, body: bytes) -> None:
        super().__init__(f"HTTP {status_code} {reason}".strip())
        self.status_code = status_code
        self.reason = reason
        self.body = body


class HandshakeFailed(Exception):
    """The answer was not a valid websocket upgrade (or the connection ended during it)."""


class ProxyFailed(HandshakeFailed):
    """The proxy in the way could not be used, or refused the tunnel."""


class ProtocolError(Exception):
    """The server broke the websocket protocol after the handshake."""


@dataclass(frozen=True)
class CloseInfo:
    """How a connection ended."""

    code: int | None  # the close frame's code; None when no close frame came
    reason: str
    by_client: bool  # this side started the closing handshake (or gave up waiting)

    def describe(self) -> str:
        if self.code is None:
            return self.reason or "connection dropped without a close frame"
        return f"closed with code {self.code}" + (f": {self.reason}" if self.reason else "")


def connect(
    url: str,
    *,
    headers: Mapping[str, str],
    subprotocols: Sequence[str],
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    proxy: str | None = None,
    timeout: float = 30.0,
    user_agent: str | None = None,
) -> WebSocket:
    """Open a ws:// or wss:// connection (blocking). ``proxy``: an http:// proxy to tunnel
    through with CONNECT. Raises OSError (and its ssl/timeout kinds), HandshakeRejected or
    HandshakeFailed."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeFailed(f"not a websocket URL: {parts.scheme}://{parts.hostname}")
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    deadline = time.monotonic() + timeout
    if proxy:
        sock = _tunnel(proxy, host, port, deadline)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            ctx = ssl_context or ssl.create_default_context()
            _set_timeout(sock, deadline)
            sock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
        key = base64.b64encode(os.urandom(16)).decode()
        _set_timeout(sock, deadline)
        sock.sendall(_upgrade_request(parts, key, subprotocols, headers, user_agent))
        status, reason, answer, rest = _read_head(sock, deadline)
        if status != 101:
            body = _read_body(sock, answer, rest, deadline)
            raise HandshakeRejected(status, reason, body)
        chosen = _accepted_subprotocol(answer, key, subprotocols)
    except BaseException:
        sock.close()
        raise
    return WebSocket(sock, chosen, rest)


def _upgrade_request(parts: SplitResult, key: str, subprotocols: Sequence[str],
                     headers: Mapping[str, str], user_agent: str | None) -> bytes:
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _accepted_subprotocol(answer: Mapping[str, str], key: str,
                          subprotocols: Sequence[str]) -> str | None:
    """The subprotocol of a valid 101 answer to `key` (None: the server chose none)."""
    if answer.get("upgrade", "").lower() != "websocket":
        raise HandshakeFailed("the answer did not upgrade to websocket")
    expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if answer.get("sec-websocket-accept") != expected:
        raise HandshakeFailed("wrong Sec-WebSocket-Accept in the answer")
    if answer.get("sec-websocket-extensions"):
        raise HandshakeFailed("the server chose an extension that was not offered")
    chosen = answer.get("sec-websocket-protocol") or None
    if chosen is not None and chosen not in subprotocols:
        raise HandshakeFailed(f"the server chose a subprotocol not offered: {chosen}")
    return chosen


class WebSocket:
    """An open connection: ``read_messages`` in one thread, ``send`` from any."""

    def __init__(self, sock: socket.socket, subprotocol: str | None, leftover: bytes = b"",
                 buffer_size: int = 1 << 20) -> None:
        self.subprotocol = subprotocol
        self._sock = sock
        self._lock = threading.Lock()
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._buf[: len(leftover)] = leftover
        self._end = len(leftover)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._close_sent = False
        self._close_deadline: float | None = None  # give up on the closing handshake then
        self._end_deadline: float | None = None  # close_after(): start closing then
        self._aborted = False
        self._finished = False
        sock.setblocking(False)

    # -- sending (any thread) ------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes = b"", timeout: float = 10.0) -> None:
        """Send one whole frame. Raises ConnectionError once the connection is closed."""
        frame = _client_frame(opcode, payload)
        with self._lock:
            if self._finished or self._aborted:
                raise ConnectionError("the websocket is closed")
            self._send_locked(frame, time.monotonic() + timeout)

    def request_close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Start the closing handshake; the reader ends when the server answers (or after
        ``timeout``). Idempotent; never raises."""
        with self._lock:
            if self._close_deadline is None:
                self._close_deadline = time.monotonic() + timeout
            if not self._close_sent and not self._finished and not self._aborted:
                self._close_sent = True
                with contextlib.suppress(OSError):
                    self._send_locked(_client_frame(OP_CLOSE, struct.pack("!H", code)),
                                      time.monotonic() + timeout)
        self._wake()

    def close_after(self, seconds: float) -> None:
        """From the reader thread: start closing if the server has not closed by then."""
        if self._end_deadline is None:
            self._end_deadline = time.monotonic() + seconds

    def abort(self) -> None:
        """Drop the connection now (any thread): the reader returns promptly."""
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._wake()

    def close(self) -> None:
        """Release the socket without a closing handshake (after the reader is done)."""
        with self._lock:
            self._finished = True
            self._sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _send_locked(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        sock = self._sock
        while view:
            try:
                sent = sock.send(view)
            except (ssl.SSLWantWriteError, BlockingIOError):
                sent = 0
                wait_write = True
            except ssl.SSLWantReadError:  # TLS wants the peer's data first (renegotiation)
                sent = 0
                wait_write = False
            if sent:
                view = view[sent:]
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("sending to the server timed out")
            if wait_write:
                select.select([], [sock], [], left)
            else:
                select.select([sock], [], [], left)

    # -- reading (one thread) ------------------------------------------------------------------

    def read_messages(
        self,
        on_data: DataHandler,
        *,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        close_timeout: float = 5.0,
    ) -> CloseInfo:
        """Deliver data messages until the connection ends; answer pings, send keepalive pings
        when the server is silent for ``ping_interval``, give up after ``ping_timeout`` more of
        silence. Raises ProtocolError on a broken frame; whatever ``on_data`` raises passes
        through (the connection is then aborted)."""
        buf, view = self._buf, self._view
        pos, end = 0, self._end
        remaining = 0  # payload bytes of the current data frame not yet delivered
        first = final = False
        in_message = False  # a fragmented message continues in the next frame
        keepalive = _Keepalive(ping_interval, ping_timeout, time.monotonic())
        eof = False
        try:
            # The hot loop, long on purpose: frames are parsed inline, a call per chunk of
            # payload and none per header field, since at tens of MB/s every Python call per
            # frame shows (tcpdump -U writes a packet at a time, so a frame can be one packet:
            # a million frames per GB). Only the rare control frames leave it.
            while True:
                # Parse and deliver everything complete in buf[pos:end].
                while pos < end:
                    if remaining:
                        take = min(remaining, end - pos)
                        remaining -= take
                        try:
                            on_data(view[pos:pos + take], first, final and not remaining)
                        except BaseException as exc:
                            raise _HandlerFailed(exc) from exc
                        pos += take
                        first = False
                        continue
                    avail = end - pos
                    if avail < 2:
                        break
                    b0, b1 = buf[pos], buf[pos + 1]
                    if b1 & 0x80:
                        raise ProtocolError("the server sent a masked frame")
                    if b0 & 0x70:
                        raise ProtocolError("the server set reserved frame bits")
                    length = b1 & 0x7F
                    head = 2
                    if length == 126:
                        if avail < 4:
                            break
                        length, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
                    elif length == 127:
                        if avail < 10:
                            break
                        length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                    opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
                    if opcode >= 0x8:  # rare (pings, the close): a call of its own is free
                        if length > 125 or not fin:
                            raise ProtocolError("the server sent a malformed control frame")
                        if avail < head + length:
                            break
                        payload = bytes(view[pos + head:pos + head + length])
                        pos += head + length
                        closed = self._control_frame(opcode, payload, close_timeout)
                        if closed is not None:
                            return closed
                        continue
                    if opcode in (OP_TEXT, OP_BINARY):
                        if in_message:
                            raise ProtocolError("a new message began inside a fragmented one")
                        first = True
                    elif opcode == OP_CONTINUATION:
                        if not in_message:
                            raise ProtocolError("a continuation frame without a message")
                        first = False
                    else:
                        raise ProtocolError(f"unknown data opcode {opcode}")
                    in_message = not fin
                    final = fin
                    pos += head
                    remaining = length
                    if not length:
                        try:
                            on_data(view[pos:pos], first, final)
                        except BaseException as exc:
                            raise _HandlerFailed(exc) from exc
                # Keep only an incomplete frame head (at most 139 bytes) for the next read.
                if pos == end:
                    pos = end = 0
                elif pos:
                    view[: end - pos] = view[pos:end]
                    end -= pos
                    pos = 0
                if eof:  # only now: what came before the end has been delivered
                    return self._ended(end > 0 or remaining > 0 or in_message)
                # Read what is there (up to a batch) or wait for more.
                filled = self._fill(view, end, keepalive, close_timeout)
                if isinstance(filled, CloseInfo):
                    return filled
                end, eof = filled
        except _HandlerFailed as failed:
            self.abort()
            raise failed.inner from None
        except OSError as exc:  # ConnectionError included: the keepalive gave up
            if self._aborted:
                return CloseInfo(None, "", by_client=True)
            return CloseInfo(None, _os_error_text(exc), by_client=False)
        except BaseException:
            self.abort()
            raise

    def _control_frame(self, opcode: int, payload: bytes,
                       close_timeout: float) -> CloseInfo | None:
        """Answer a ping; a close ends the reading (its CloseInfo)."""
        if opcode == OP_PING:
            self._send_quietly(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            return self._closing_handshake(payload, close_timeout)
        elif opcode != OP_PONG:
            raise ProtocolError(f"unknown control opcode {opcode}")
        return None

    def _fill(self, view: memoryview, end: int, keepalive: _Keepalive,
              close_timeout: float) -> tuple[int, bool] | CloseInfo:
        """Read into view[end:] what is there, up to a batch, or wait for it (sending keepalive
        pings while the server is silent): (the new end, whether the server closed), or how the
        connection ended meanwhile."""
        got = 0
        eof = False
        size = len(view)
        while end < size and got < _BATCH:
            with self._lock:
                if self._aborted or self._finished:
                    return CloseInfo(None, "", by_client=True)
                try:
                    n = self._sock.recv_into(view[end:])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    n = -1
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    n = 0
            if n > 0:
                end += n
                got += n
                continue
            if n == 0:
                eof = True
                break
            if got:
                break
            now = time.monotonic()
            if self._close_deadline is not None and now >= self._close_deadline:
                return CloseInfo(None, "the server did not answer the close", by_client=True)
            if self._end_deadline is not None and now >= self._end_deadline:
                self.request_close(timeout=close_timeout)
                self._end_deadline = None
                continue
            wait = keepalive.wait(now, self._send_quietly)
            for deadline in (self._close_deadline, self._end_deadline):
                if deadline is not None:
                    wait = min(wait, deadline - now)
            readable, _, _ = select.select([self._sock, self._wake_r], [], [], max(wait, 0.0))
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
        keepalive.heard(time.monotonic())
        return end, eof

    def _send_quietly(self, opcode: int, payload: bytes) -> None:
        with contextlib.suppress(OSError), self._lock:
            if not self._finished:
                self._send_locked(_client_frame(opcode, payload), time.monotonic() + 10.0)

    def _closing_handshake(self, payload: bytes, close_timeout: float) -> CloseInfo:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        reason = payload[2:].decode("utf-8", "replace")
        by_client = self._close_sent
        if not by_client:
            echo = struct.pack("!H", code) if code != 1005 else b""
            with contextlib.suppress(OSError), self._lock:
                self._close_sent = True
                self._send_locked(_client_frame(OP_CLOSE, echo), time.monotonic() + 1.0)
        # The server closes TCP first; wait briefly for it so that it never sees a reset.
        deadline = time.monotonic() + close_timeout
        scratch = bytearray(16384)
        while time.monotonic() < deadline:
            with self._lock:
                try:
                    if self._sock.recv_into(scratch) == 0:
                        break
                    continue
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    break
            select.select([self._sock], [], [], max(deadline - time.monotonic(), 0.0))
        return CloseInfo(code, reason, by_client)

    def _ended(self, mid_frame: bool) -> CloseInfo:
        if self._close_sent:
            return CloseInfo(None, "", by_client=True)
        what = "inside a frame" if mid_frame else "without a close frame"
        return CloseInfo(None, f"connection dropped {what}", by_client=False)


class _HandlerFailed(Exception):
    """Carries what ``on_data`` raised past the reader's own error handling."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(repr(inner))
        self.inner = inner


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if not n:
        return head + mask
    # XOR as one big integer: fast for megabytes too, no Python loop per byte.
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def _set_timeout(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)


def _recv_some(sock: socket.socket, deadline: float) -> bytes:
    _set_timeout(sock, deadline)
    return sock.recv(65536)


def _read_head(sock: socket.socket, deadline: float) -> tuple[int, str, dict[str, str], bytes]:
    """(status code, reason, lower-cased headers, bytes after the head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD:
            raise HandshakeFailed("the HTTP answer head is too large")
        chunk = _recv_some(sock, deadline)
        if not chunk:
            raise HandshakeFailed("the connection closed during the handshake")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise HandshakeFailed(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(fields[1]), fields[2] if len(fields) > 2 else "", headers, rest


def _read_body(sock: socket.socket, headers: Mapping[str, str], data: bytes,
               deadline: float) -> bytes:
    """The body of a refused upgrade, best effort (it carries the Status message)."""
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return _read_chunked(sock, data, deadline)
        length = headers.get("content-length")
        want = min(int(length), _MAX_ERROR_BODY) if length and length.isdigit() else None
        while want is None or len(data) < want:
            if len(data) >= _MAX_ERROR_BODY:
                break
            chunk = _recv_some(sock, deadline)
            if not chunk:
                break
            data += chunk
        return data[:want] if want is not None else data
    except (OSError, ValueError):
        return data


def _read_chunked(sock: socket.socket, data: bytes, deadline: float) -> bytes:
    body = b""
    while len(body) < _MAX_ERROR_BODY:
        while b"\r\n" not in data:
            chunk = _recv_some(sock, deadline)
            if not chunk:
                return body
            data += chunk
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return body
        while len(data) < size + 2:
            chunk = _recv_some(sock, deadline)
            if not chunk:
                return body + data[:size]
            data += chunk
        body += data[:size]
        data = data[size + 2:]
    return body


def _tunnel(proxy: str, host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to host:port through an HTTP proxy (CONNECT)."""
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise ProxyFailed(f"unsupported proxy-url scheme {parts.scheme!r} (only http://)")
    sock = socket.create_connection((parts.hostname, parts.port or 80),
                                    timeout=max(deadline - time.monotonic(), 0.01))
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if parts.username is not None:
            user = unquote(parts.username)
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        _set_timeout(sock, deadline)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, reason, _, rest = _read_head(sock, deadline)
        if status != 200:
            raise ProxyFailed(f"the proxy refused the tunnel: HTTP {status} {reason}".strip())
        if rest:
            raise ProxyFailed("the proxy sent data before the tunnel was used")
    except BaseException:
        sock.close()
        raise
    return sock


class _Keepalive:
    """Pings a silent server every `interval` and gives up `timeout` after an unanswered one."""

    def __init__(self, interval: float | None, timeout: float | None, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_rx = now
        self.ping_sent: float | None = None

    def heard(self, now: float) -> None:
        self.last_rx = now
        self.ping_sent = None

    def wait(self, now: float, send: Callable[[int, bytes], None]) -> float:
        """How long to wait for the server now, after sending the ping that is due."""
        if self.interval is None:
            return 3600.0
        if self.ping_sent is None and now - self.last_rx >= self.interval:
            send(OP_PING, b"zsniff")
            self.ping_sent = now
        if self.ping_sent is not None and self.timeout is not None:
            if now - self.ping_sent >= self.timeout:
                raise ConnectionError(
                    f"the server sent nothing for {now - self.last_rx:.0f} s, "
                    "not even an answer to a keepalive ping")
            return min(3600.0, self.ping_sent + self.timeout - now)
        return min(3600.0, self.last_rx + self.interval - now)


def _os_error_text(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    strerror = exc.strerror if isinstance(exc, OSError) else None
    text = strerror or str(exc) or type(exc).__name__
    return f"connection lost: {text}"
