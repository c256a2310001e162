"""execws against a real local websocket server speaking the Kubernetes exec channel protocol."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.status import ApiStatus
from kubectl_zsniff.wire.endpoint import ApiEndpoint, exec_url
from kubectl_zsniff.wire.execws import (
    PROTOCOL_V4,
    PROTOCOL_V5,
    ExecFailedError,
    ExecSession,
    StreamLostError,
    exec_capture_output,
)

T = TypeVar("T")
TOKEN = "s3cr3t-token-never-shown"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUCCESS = b'\x03{"metadata":{},"status":"Success"}'
BIG = 64 << 20  # 64 MiB


def nonzero(code: int) -> bytes:
    doc = {
        "metadata": {},
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "message": f"command terminated with non-zero exit code: error executing command "
        f"[sh -c exit {code}], exit code {code}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }
    return b"\x03" + json.dumps(doc).encode()


def status_response(code: int, reason: str, message: str) -> Response:
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(code, reason, headers, body)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def frame_sizes(total: int) -> Iterator[int]:
    """Varied sizes: 1-byte frames, odd sizes, 64 KiB, several MiB."""
    cycle = [1, 1, 2, 3, 7, 100, 1500, 4096, 65535, 65536, 65537, 1 << 20, (3 << 20) + 5]
    sent = 0
    i = 0
    while sent < total:
        n = min(cycle[i % len(cycle)], total - sent)
        yield n
        sent += n
        i += 1


class FakeApiServer:
    """Answers /api/v1/namespaces/NS/pods/POD/exec like an API server; argv[0] picks a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self.scheme = "http"

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        self.requests.append({"path": parts.path, "query": query})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status_response(401, "Unauthorized", "Unauthorized")
        segs = parts.path.split("/")
        pod = segs[6] if len(segs) > 6 else ""
        if pod == "forbidden":
            return status_response(
                403,
                "Forbidden",
                'pods "forbidden" is forbidden: User "bob" cannot create resource "pods/exec" '
                'in API group "" in the namespace "ns"',
            )
        if pod == "missing":
            return status_response(404, "NotFound", 'pods "missing" not found')
        if pod == "badcontainer":
            return status_response(
                400, "BadRequest", "container nope is not valid for pod badcontainer"
            )
        if pod == "pending":
            return status_response(400, "BadRequest", "pod pending does not have a host assigned")
        if pod == "boom":
            return status_response(500, "InternalError", "etcd is sad")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        query = parse_qs(
            urlsplit(ws.request.path if ws.request else "").query, keep_blank_values=True
        )
        argv = query["command"]
        script = SCRIPTS[argv[0]]
        await script(ws, argv[1:])


async def s_stream(ws: ServerConnection, args: list[str]) -> None:
    seed, size = int(args[0]), int(args[1])
    data = payload(seed, size)
    view = memoryview(data)
    pos = 0
    for i, n in enumerate(frame_sizes(size)):
        await ws.send(b"\x01" + view[pos : pos + n])
        pos += n
        if i % 5 == 0:
            await ws.send(b"\x02" + f"err{i}\n".encode())
    await ws.send(SUCCESS)


async def s_exit(ws: ServerConnection, args: list[str]) -> None:
    await ws.send(b"\x01partial output")
    await ws.send(b"\x02something failed\n")
    await ws.send(nonzero(int(args[0])))


async def s_tail(ws: ServerConnection, args: list[str]) -> None:
    """Status first, then the last stdout bytes, then the close: the tail must not be lost."""
    await ws.send(b"\x01head-")
    await ws.send(SUCCESS)
    for _ in range(int(args[0])):
        await ws.send(b"\x01" + b"t" * 65536)
    await ws.send(b"\x01-end")


async def s_drop(ws: ServerConnection, args: list[str]) -> None:
    n = int(args[0])
    await ws.send(b"\x01" + b"x" * n)
    await ws.send(b"\x02stderr before the cut\n")
    # Let the frames leave, then cut the TCP connection without a close frame.
    await asyncio.sleep(0.2)
    assert ws.transport is not None
    ws.transport.abort()


async def s_echo(ws: ServerConnection, args: list[str]) -> None:
    """cat: stdin frames echoed to stdout; EOF (v5 close of channel 0) ends it."""
    async for msg in ws:
        assert isinstance(msg, bytes)
        if msg[0] == 0:
            await ws.send(b"\x01" + msg[1:])
        elif msg == b"\xff\x00":
            await ws.send(b"\x01<EOF>")
            await ws.send(b"\xff\x01")  # v5: the server closes stdout
            await ws.send(SUCCESS)
            return


async def s_hang(ws: ServerConnection, args: list[str]) -> None:
    await ws.send(b"\x01started")
    await ws.wait_closed()  # a sleep would keep the server from shutting down


async def s_hang_after_status(ws: ServerConnection, args: list[str]) -> None:
    await ws.send(b"\x01done")
    await ws.send(SUCCESS)
    await ws.wait_closed()


async def s_argv(ws: ServerConnection, args: list[str]) -> None:
    await ws.send(b"\x01" + json.dumps(args).encode())
    await ws.send(SUCCESS)


async def s_notfound(ws: ServerConnection, args: list[str]) -> None:
    doc = {
        "metadata": {},
        "status": "Failure",
        "reason": "InternalError",
        "message": 'failed to exec in container: exec: "nope": executable file not found',
    }
    await ws.send(b"\x03" + json.dumps(doc).encode())


async def s_clean_close_no_status(ws: ServerConnection, args: list[str]) -> None:
    await ws.send(b"\x01abc")


SCRIPTS: dict[str, Callable[[ServerConnection, list[str]], Awaitable[None]]] = {
    "stream": s_stream,
    "exit": s_exit,
    "tail": s_tail,
    "drop": s_drop,
    "cat": s_echo,
    "hang": s_hang,
    "hang-after-status": s_hang_after_status,
    "argv": s_argv,
    "nope": s_notfound,
    "noclose": s_clean_close_no_status,
}


@asynccontextmanager
async def fake_server(
    protocols: list[str], ssl_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    async with serve(
        fake.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(p) for p in protocols],
        process_request=fake.process_request,
        compression=None,
        max_size=None,
        ssl=ssl_ctx,
    ) as srv:
        fake.port = srv.sockets[0].getsockname()[1]
        fake.scheme = "https" if ssl_ctx else "http"
        yield fake


def endpoint(fake: FakeApiServer, **kw: Any) -> ApiEndpoint:
    kw.setdefault("headers", AUTH)
    return ApiEndpoint(base_url=f"{fake.scheme}://127.0.0.1:{fake.port}", **kw)


PROTOS = pytest.mark.parametrize(
    "protocols,expected",
    [([PROTOCOL_V5, PROTOCOL_V4], PROTOCOL_V5), ([PROTOCOL_V4], PROTOCOL_V4)],
    ids=["v5", "v4"],
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- URL ---------------------------------------------------------------------------------


def test_exec_url_encodes_argv_and_flags() -> None:
    ep = ApiEndpoint("https://k8s.example:6443/prefix/", AUTH)
    url = exec_url(ep, "my ns", "p/1", "c", ["sh", "-c", "a b&c=d"], stdin=True)
    parts = urlsplit(url)
    assert parts.scheme == "wss"
    assert parts.path == "/prefix/api/v1/namespaces/my%20ns/pods/p%2F1/exec"
    q = parse_qs(parts.query)
    assert q["command"] == ["sh", "-c", "a b&c=d"]
    assert q["container"] == ["c"]
    assert q["stdin"] == q["stdout"] == q["stderr"] == ["true"]
    assert "tty" not in q
    url = exec_url(ApiEndpoint("http://h:8080"), "ns", "p", None, ["x"], stdin=False)
    assert url.startswith("ws://h:8080/api/v1/namespaces/ns/pods/p/exec?")
    assert "container" not in url and "stdin" not in url


def test_token_never_in_repr() -> None:
    ep = ApiEndpoint("https://h:6443", AUTH)
    assert TOKEN not in repr(ep)
    assert TOKEN not in repr(ExecSession(ep, "ns", "p", "c", ["x"]))


def test_exit_code_of_the_status_frame() -> None:
    assert ApiStatus.parse(b'{"status": "Success"}').exit_code == 0
    assert ApiStatus.parse(nonzero(3)[1:]).exit_code == 3
    assert ApiStatus.parse(b'{"status": "Failure", "reason": "InternalError"}').exit_code is None


# --- streams -----------------------------------------------------------------------------


@PROTOS
def test_large_binary_stream_byte_exact(protocols: list[str], expected: str) -> None:
    async def main() -> None:
        async with fake_server(protocols) as fake:
            h = hashlib.sha256()
            err = bytearray()
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["stream", "7", str(BIG)]) as s:
                assert s.protocol == expected
                result = await s.run(h.update, err.extend)
            assert h.hexdigest() == hashlib.sha256(payload(7, BIG)).hexdigest()
            assert result.bytes_stdout == BIG
            assert result.bytes_stderr == len(err)
            assert err.startswith(b"err0\nerr5\n")
            assert result.complete and result.exit_code == 0
            assert result.failure_message is None

    run(main())


@PROTOS
def test_nonzero_exit_code(protocols: list[str], expected: str) -> None:
    async def main() -> None:
        async with fake_server(protocols) as fake:
            out, err = bytearray(), bytearray()
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["exit", "3"]) as s:
                result = await s.run(out.extend, err.extend)
            assert result.exit_code == 3 and result.complete
            assert result.status is not None and result.status.reason == "NonZeroExitCode"
            assert bytes(out) == b"partial output" and bytes(err) == b"something failed\n"

    run(main())


@PROTOS
def test_tail_after_status_not_lost(protocols: list[str], expected: str) -> None:
    async def main() -> None:
        async with fake_server(protocols) as fake:
            out = bytearray()
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["tail", "200"]) as s:
                result = await s.run(out.extend, lambda b: None)
            assert out.startswith(b"head-") and out.endswith(b"-end")
            assert len(out) == 5 + 200 * 65536 + 4 == result.bytes_stdout
            assert result.exit_code == 0

    run(main())


@PROTOS
def test_dropped_connection_raises_stream_lost(protocols: list[str], expected: str) -> None:
    async def main() -> None:
        async with fake_server(protocols) as fake:
            out = bytearray()
            s = ExecSession(endpoint(fake), "ns", "p", "c", ["drop", "123456"])
            async with s:
                with pytest.raises(StreamLostError) as info:
                    await s.run(out.extend, lambda b: None)
            exc = info.value
            assert exc.status == ExitStatus.STREAM_LOST
            assert exc.bytes_stdout == 123456 == len(out)
            assert exc.result.bytes_stderr == len(b"stderr before the cut\n")
            assert not exc.result.complete
            assert "123456 bytes" in exc.message
            assert "valid up to the last whole packet" in exc.hint

    run(main())


def test_clean_close_without_status_is_stream_lost() -> None:
    async def main() -> None:
        async with fake_server([PROTOCOL_V5]) as fake:
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["noclose"]) as s:
                with pytest.raises(StreamLostError) as info:
                    await s.run(lambda b: None, lambda b: None)
            assert info.value.result.bytes_stdout == 3

    run(main())


def test_status_without_close_returns_after_grace() -> None:
    async def main() -> None:
        async with fake_server([PROTOCOL_V5]) as fake:
            s = ExecSession(endpoint(fake), "ns", "p", "c", ["hang-after-status"], status_grace=0.3)
            async with s:
                t0 = time.monotonic()
                result = await s.run(lambda b: None, lambda b: None)
            assert time.monotonic() - t0 < 3
            assert result.complete and result.exit_code == 0 and result.bytes_stdout == 4

    run(main())


def test_argv_passed_verbatim() -> None:
    argv = ["a b", "x&y=z", "'quoted'", "$(rm -rf /)", "ü", ""]

    async def main() -> None:
        async with fake_server([PROTOCOL_V5]) as fake:
            code, out, _ = await exec_capture_output(
                endpoint(fake), "ns", "p", "c", ["argv", *argv], timeout=10
            )
            assert code == 0
            assert json.loads(out) == argv

    run(main())


def test_exec_capture_output_codes_and_failures() -> None:
    async def main() -> None:
        async with fake_server([PROTOCOL_V5]) as fake:
            code, out, err = await exec_capture_output(
                endpoint(fake), "ns", "p", "c", ["exit", "3"]
            )
            assert (code, out, err) == (3, b"partial output", b"something failed\n")
            with pytest.raises(ExecFailedError) as info:
                await exec_capture_output(endpoint(fake), "ns", "p", "c", ["nope"])
            assert "executable file not found" in info.value.message
            with pytest.raises(ZsniffError) as info2:
                await exec_capture_output(endpoint(fake), "ns", "p", "c", ["hang"], timeout=0.5)
            assert info2.value.status == ExitStatus.UNREACHABLE
            assert "did not finish" in info2.value.message

    run(main())


# --- stdin and close ---------------------------------------------------------------------


def test_stdin_echo_and_eof_v5() -> None:
    async def main() -> None:
        async with fake_server([PROTOCOL_V5, PROTOCOL_V4]) as fake:
            out = bytearray()
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["cat"], stdin=True) as s:
                reader = asyncio.create_task(s.run(out.extend, lambda b: None))
                await s.send_stdin(b"hello ")
                await s.send_stdin(memoryview(b"\x00\xffworld"))
                assert await s.close_stdin() is True
                result = await asyncio.wait_for(reader, 5)
            assert bytes(out) == b"hello \x00\xffworld<EOF>"
            assert result.exit_code == 0

    run(main())


def test_close_stdin_unsupported_on_v4() -> None:
    async def main() -> None:
        async with fake_server([PROTOCOL_V4]) as fake:
            out = bytearray()
            async with ExecSession(endpoint(fake), "ns", "p", "c", ["cat"], stdin=True) as s:
                reader = asyncio.create_task(s.run(out.extend, lambda b: None))
                await s.send_stdin(b"ping")
                assert await s.close_stdin() is False
                for _ in range(100):
                    if out:
                        break
                    await asyncio.sleep(0.02)
                assert bytes(out) == b"ping"
                await s.close()
                result = await asyncio.wait_for(reader, 5)
            assert result.closed_by_client and not result.complete

    run(main())


@PROTOS
def test_close_from_another_task_ends_run(protocols: list[str], expected: str) -> None:
    async def main() -> None:
        async with fake_server(protocols) as fake:
            out = bytearray()
            s = ExecSession(endpoint(fake), "ns", "p", "c", ["hang"])
            await s.connect()
            reader = asyncio.create_task(s.run(out.extend, lambda b: None))
            while not out:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await s.close()
            result = await asyncio.wait_for(reader, 5)
            assert time.monotonic() - t0 < 1.0
            assert result.closed_by_client and not result.complete
            assert result.exit_code is None and result.bytes_stdout == len(b"started")
            await s.close()  # idempotent

    run(main())


# --- handshake failures ------------------------------------------------------------------


def handshake_error(fake: FakeApiServer, pod: str, **kw: Any) -> ZsniffError:
    async def main() -> ZsniffError:
        s = ExecSession(endpoint(fake, **kw), "ns", pod, "c", ["stream", "1", "1"])
        try:
            await s.connect()
        except ZsniffError as exc:
            return exc
        await s.close()
        raise AssertionError("connect() succeeded")

    return run(main())


def assert_no_secret(exc: ZsniffError) -> None:
    assert TOKEN not in str(exc) and TOKEN not in exc.hint and TOKEN not in repr(exc)
    assert exc.__cause__ is None or TOKEN not in str(exc.__cause__)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    """A fake server on a background loop, for tests that only make failing handshakes."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    async def serve_forever() -> None:
        async with fake_server([PROTOCOL_V5, PROTOCOL_V4]) as fake:
            holder["fake"] = fake
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_forever(),))
    thread.start()
    ready.wait(10)
    try:
        yield holder["fake"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    "pod,headers,status,words",
    [
        (
            "p",
            {"Authorization": "Bearer wrong"},
            ExitStatus.UNAUTHORIZED,
            "rejected the credentials",
        ),
        ("forbidden", AUTH, ExitStatus.FORBIDDEN, 'cannot create resource "pods/exec"'),
        ("missing", AUTH, ExitStatus.NOT_FOUND, 'pods "missing" not found'),
        ("badcontainer", AUTH, ExitStatus.NOT_FOUND, "not valid for pod"),
        ("pending", AUTH, ExitStatus.POD_NOT_RUNNING, "does not have a host assigned"),
        ("boom", AUTH, ExitStatus.UNREACHABLE, "HTTP 500"),
    ],
)
def test_handshake_status_mapping(
    server: FakeApiServer, pod: str, headers: dict[str, str], status: ExitStatus, words: str
) -> None:
    exc = handshake_error(server, pod, headers=headers)
    assert exc.status == status, exc
    assert words in exc.message
    assert exc.hint
    assert_no_secret(exc)
    if status == ExitStatus.FORBIDDEN:
        assert "kubectl auth can-i create pods/exec -n ns" in exc.hint


def test_wrong_token_never_leaks(server: FakeApiServer) -> None:
    bad = "Bearer other-secret-value"
    exc = handshake_error(server, "p", headers={"Authorization": bad})
    assert "other-secret-value" not in str(exc) + exc.hint + repr(exc)


def connect_error(endpoint: ApiEndpoint, open_timeout: float = 10) -> ZsniffError:
    """The error of an ExecSession that cannot connect."""

    async def main() -> ZsniffError:
        session = ExecSession(endpoint, "ns", "p", "c", ["x"], open_timeout=open_timeout)
        with pytest.raises(ZsniffError) as info:
            await session.connect()
        return info.value

    return run(main())


def test_connection_refused_is_unreachable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens

    exc = connect_error(ApiEndpoint(f"http://127.0.0.1:{port}", AUTH))
    assert exc.status == ExitStatus.UNREACHABLE
    assert f"127.0.0.1:{port}" in exc.message
    assert_no_secret(exc)


def test_silent_server_times_out_and_an_abandoned_connect_does_not_hold_the_exit() -> None:
    """A server that accepts TCP and never answers: the open timeout is an UNREACHABLE error;
    a connect given up by its caller (Ctrl-C) does not keep asyncio.run from returning."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:  # never accept()ed
        port = listener.getsockname()[1]
        ep = ApiEndpoint(f"http://127.0.0.1:{port}", AUTH)

        exc = connect_error(ep, open_timeout=0.5)
        assert exc.status == ExitStatus.UNREACHABLE
        assert "timed out" in exc.message

        async def abandoned() -> None:
            session = ExecSession(ep, "ns", "p", "c", ["x"], open_timeout=30)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(session.connect(), 0.3)

        started = time.monotonic()
        run(abandoned())
        assert time.monotonic() - started < 5  # not the 30 s of the open timeout


def test_dns_failure_is_unreachable() -> None:
    exc = connect_error(ApiEndpoint("https://no-such-host.invalid:6443", AUTH))
    assert exc.status == ExitStatus.UNREACHABLE
    assert "no-such-host.invalid" in exc.message


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_untrusted_cert_is_unreachable(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        async with fake_server([PROTOCOL_V5], server_ctx) as fake:
            s = ExecSession(endpoint(fake), "ns", "p", "c", ["exit", "0"])
            with pytest.raises(ZsniffError) as info:
                await s.connect()
            exc = info.value
            assert exc.status == ExitStatus.UNREACHABLE
            assert "TLS certificate verification failed" in exc.message
            assert "certificate-authority" in exc.hint
            assert "insecure" not in exc.hint
            assert_no_secret(exc)

    run(main())


def test_tls_with_ca_works(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with fake_server([PROTOCOL_V5], server_ctx) as fake:
            out = bytearray()
            async with ExecSession(
                endpoint(fake, ssl_context=client_ctx), "ns", "p", "c", ["exit", "4"]
            ) as s:
                result = await s.run(out.extend, lambda b: None)
            assert result.exit_code == 4 and bytes(out) == b"partial output"

    run(main())


def test_endpoint_from_configuration(self_signed: tuple[Path, Path]) -> None:
    from kubernetes.client import Configuration

    from kubectl_zsniff.kube.client import endpoint_from_configuration

    cert, _ = self_signed
    cfg = Configuration()
    cfg.host = "https://127.0.0.1:6443"
    cfg.ssl_ca_cert = str(cert)
    cfg.api_key["BearerToken"] = f"Bearer {TOKEN}"
    calls: list[int] = []
    cfg.refresh_api_key_hook = lambda c: calls.append(1)  # type: ignore[assignment]
    ep = endpoint_from_configuration(cfg)
    assert calls, "the refresh hook (exec plugins) must run"
    assert ep.headers["Authorization"] == f"Bearer {TOKEN}"
    assert ep.ssl_context is not None
    assert ep.ssl_context.verify_mode == ssl.CERT_REQUIRED and ep.ssl_context.check_hostname
    assert TOKEN not in repr(ep)
    cfg.verify_ssl = False  # only what insecure-skip-tls-verify in a kubeconfig produces
    ep2 = endpoint_from_configuration(cfg)
    assert ep2.ssl_context is not None and ep2.ssl_context.verify_mode == ssl.CERT_NONE
