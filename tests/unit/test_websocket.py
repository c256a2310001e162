"""The websocket client against hand-written servers: every frame is built byte by byte here,
so the client is checked against the RFC, not against another implementation's habits."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from kubectl_zsniff.wire.websocket import (
    OP_BINARY,
    HandshakeFailed,
    HandshakeRejected,
    ProtocolError,
    WebSocket,
    connect,
)
from tests.connect_proxy import ConnectProxy

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if masked:
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def read_client_frame(conn: socket.socket) -> tuple[int, bytes, bool]:
    """(opcode, unmasked payload, was masked) of one frame from the client."""
    b0, b1 = recv_exact(conn, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(conn, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(conn, 8))
    masked = bool(b1 & 0x80)
    key = recv_exact(conn, 4) if masked else b"\0\0\0\0"
    data = recv_exact(conn, n)
    return b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data)), masked


def recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def read_request(conn: socket.socket) -> dict[str, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise EOFError
        data += chunk
    lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
    headers = {"request-line": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def upgrade_answer(request: dict[str, str], protocol: str | None = "v5.channel.k8s.io") -> bytes:
    accept = base64.b64encode(
        hashlib.sha1(request["sec-websocket-key"].encode() + GUID).digest()).decode()
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept}"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def raw_server(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection TCP server running ``handler`` in a thread; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                handler(conn)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(10)
        listener.close()
    if errors:
        raise errors[0]


def open_ws(port: int, proxy: str | None = None) -> WebSocket:
    return connect(f"ws://127.0.0.1:{port}/api/v1/x?command=a", headers={"Authorization": "t"},
                   subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"], timeout=5,
                   proxy=proxy)


class Collector:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._current = bytearray()
        self.pieces = 0

    def __call__(self, piece: memoryview, first: bool, final: bool) -> None:
        if first:
            assert not self._current
        self._current += piece  # a view of the read buffer: copied, as callers must
        self.pieces += 1
        if final:
            self.messages.append(bytes(self._current))
            self._current.clear()


def test_frames_in_the_handshake_packet_and_an_abrupt_end_are_all_delivered() -> None:
    """The 101 answer, data, status and close in one write, then TCP closes at once: nothing
    may be lost (the frames come with the answer; the end comes with the last frame)."""
    payloads = [b"\x01" + os.urandom(1000), b"\x02warning", b'\x03{"status":"Success"}']

    def handler(conn: socket.socket) -> None:
        request = read_request(conn)
        conn.sendall(upgrade_answer(request) + b"".join(frame(OP_BINARY, p) for p in payloads)
                     + frame(0x8, struct.pack("!H", 1000)))

    with raw_server(handler) as port:
        ws = open_ws(port)
        got = Collector()
        info = ws.read_messages(got)
        ws.close()
    assert got.messages == payloads
    assert (info.code, info.by_client) == (1000, False)


def test_data_then_eof_without_close_frame_is_delivered_then_reported_dropped() -> None:
    payload = b"\x01" + os.urandom(5000)

    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)) + frame(OP_BINARY, payload))

    with raw_server(handler) as port:
        ws = open_ws(port)
        got = Collector()
        info = ws.read_messages(got)
    assert got.messages == [payload]
    assert info.code is None and not info.by_client
    assert "without a close frame" in info.describe()


def test_cut_inside_a_frame_is_reported_as_such() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)) + frame(OP_BINARY, b"\x01" * 3000)[:1000])

    with raw_server(handler) as port:
        ws = open_ws(port)
        got = Collector()
        info = ws.read_messages(got)
    assert got.messages == []  # the cut message never completes...
    assert got.pieces >= 1  # ...but what came was handed over as it came
    assert "inside a frame" in info.describe()


def test_fragmented_and_larger_than_buffer_messages_are_byte_exact() -> None:
    big = b"\x01" + os.urandom(3 * 1024 * 1024 + 17)  # three times the 1 MiB read buffer
    fragments = [b"\x01part-one/", b"part-two/", b"", b"part-three"]

    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)))
        conn.sendall(frame(OP_BINARY, big))
        for i, piece in enumerate(fragments):
            opcode = OP_BINARY if i == 0 else 0x0
            conn.sendall(frame(opcode, piece, fin=i == len(fragments) - 1))
            if i == 1:  # a ping between fragments is allowed
                conn.sendall(frame(0x9, b"between"))
        conn.sendall(frame(0x8, struct.pack("!H", 1000)))
        # The client answers the ping, then echoes the close.
        opcode, data, masked = read_client_frame(conn)
        assert (opcode, data, masked) == (0xA, b"between", True)
        opcode, data, masked = read_client_frame(conn)
        assert (opcode, data[:2], masked) == (0x8, struct.pack("!H", 1000), True)

    with raw_server(handler) as port:
        ws = open_ws(port)
        got = Collector()
        info = ws.read_messages(got)
        ws.close()
    assert got.messages == [big, b"".join(fragments)]
    assert info.code == 1000


def test_client_frames_are_masked_and_exact() -> None:
    sent = os.urandom(70_000) + b"end"  # a 64-bit length, masked as one integer
    received: list[tuple[int, bytes, bool]] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)))
        received.append(read_client_frame(conn))
        received.append(read_client_frame(conn))
        conn.sendall(frame(0x8, struct.pack("!H", 1000)))
        read_client_frame(conn)

    with raw_server(handler) as port:
        ws = open_ws(port)
        ws.send(OP_BINARY, b"\x00" + sent)
        ws.send(OP_BINARY, b"\xff\x00")
        ws.read_messages(Collector())
        ws.close()
    assert received == [(OP_BINARY, b"\x00" + sent, True), (OP_BINARY, b"\xff\x00", True)]


def test_masked_server_frame_is_a_protocol_error() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)) + frame(OP_BINARY, b"\x01x", masked=True))
        time.sleep(0.5)

    with raw_server(handler) as port:
        ws = open_ws(port)
        with pytest.raises(ProtocolError, match="masked"):
            ws.read_messages(Collector())


def test_silent_server_gets_a_ping_then_is_given_up() -> None:
    pings: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)))
        opcode, data, _ = read_client_frame(conn)
        if opcode == 0x9:
            pings.append(data)
        time.sleep(1.5)  # never answers

    with raw_server(handler) as port:
        ws = open_ws(port)
        started = time.monotonic()
        info = ws.read_messages(Collector(), ping_interval=0.2, ping_timeout=0.5)
        took = time.monotonic() - started
    assert len(pings) == 1
    assert info.code is None and "keepalive" in info.describe()
    assert 0.6 <= took < 1.5


def test_request_close_from_another_thread_ends_the_reader() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)) + frame(OP_BINARY, b"\x01hello"))
        opcode, data, _ = read_client_frame(conn)
        assert opcode == 0x8
        conn.sendall(frame(0x8, data[:2]))

    with raw_server(handler) as port:
        ws = open_ws(port)
        got = Collector()
        timer = threading.Timer(0.3, ws.request_close)
        timer.start()
        info = ws.read_messages(got)
        ws.close()
    assert got.messages == [b"\x01hello"]
    assert (info.code, info.by_client) == (1000, True)


def test_handler_errors_pass_through_and_drop_the_connection() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(upgrade_answer(read_request(conn)) + frame(OP_BINARY, b"\x01boom"))
        conn.settimeout(5)
        assert conn.recv(10) == b""  # dropped, not left hanging

    def explode(piece: memoryview, first: bool, final: bool) -> None:
        raise KeyError("from the handler")

    with raw_server(handler) as port:
        ws = open_ws(port)
        with pytest.raises(KeyError, match="from the handler"):
            ws.read_messages(explode)
        ws.close()


def test_refused_upgrade_carries_status_and_chunked_body() -> None:
    body = b'{"kind":"Status","message":"pods \\"x\\" not found","reason":"NotFound"}'

    def handler(conn: socket.socket) -> None:
        read_request(conn)
        half = len(body) // 2
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n"
                     + f"{half:x}\r\n".encode() + body[:half] + b"\r\n"
                     + f"{len(body) - half:x}\r\n".encode() + body[half:] + b"\r\n0\r\n\r\n")

    with raw_server(handler) as port, pytest.raises(HandshakeRejected) as caught:
        open_ws(port)
    assert caught.value.status_code == 404
    assert caught.value.body == body


@pytest.mark.parametrize("answer, match", [
    (lambda r: upgrade_answer(r).replace(b"Sec-WebSocket-Accept: ", b"Sec-WebSocket-Accept: x"),
     "Sec-WebSocket-Accept"),
    (lambda r: upgrade_answer(r, protocol="v9.channel.k8s.io"), "subprotocol not offered"),
    (lambda r: b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer"),
    (lambda r: b"", "closed during the handshake"),
])
def test_bad_upgrade_answers_fail_the_handshake(
    answer: Callable[[dict[str, str]], bytes], match: str
) -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(answer(read_request(conn)))

    with raw_server(handler) as port, pytest.raises(HandshakeFailed, match=match):
        open_ws(port)


def test_http_proxy_tunnel_with_credentials() -> None:
    """An http:// proxy-url: CONNECT to the API server, Basic credentials from the URL."""
    seen: dict[str, str] = {}

    def api(conn: socket.socket) -> None:
        request = read_request(conn)
        seen["path"] = request["request-line"]
        conn.sendall(upgrade_answer(request) + frame(OP_BINARY, b"\x01through")
                     + frame(0x8, struct.pack("!H", 1000)))

    with raw_server(api) as api_port, ConnectProxy() as proxy:
        ws = open_ws(api_port, proxy=f"http://me:s%3Acret@127.0.0.1:{proxy.port}")
        got = Collector()
        ws.read_messages(got)
        ws.close()
    assert got.messages == [b"\x01through"]
    assert proxy.requests == [f"CONNECT 127.0.0.1:{api_port} HTTP/1.1"]
    assert proxy.headers[0]["proxy-authorization"] == (
        "Basic " + base64.b64encode(b"me:s:cret").decode())
    assert seen["path"].startswith("GET /api/v1/x?command=a ")


def test_proxy_refusing_the_tunnel_fails_clearly() -> None:
    def proxy(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    with raw_server(proxy) as port, pytest.raises(HandshakeFailed, match="407"):
        open_ws(9, proxy=f"http://127.0.0.1:{port}")
