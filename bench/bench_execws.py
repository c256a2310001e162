"""Throughput of kubectl_zsniff.wire.execws against a raw websockets recv loop (not a test).

A local server process streams N MB of stdout frames (channel 1) of 64 KiB, then a Success
status and a close, speaking just enough of the exec websocket protocol. The server writes
pre-built frames from its own process so that it is never the bottleneck and its CPU time is not
counted. Each client runs ``--rounds`` times, alternating; the best round counts.

    python bench/bench_execws.py [--mb 1024] [--frame 65536] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubectl_zsniff.wire.endpoint import ApiEndpoint  # noqa: E402
from kubectl_zsniff.wire.execws import PROTOCOL_V4, PROTOCOL_V5, ExecSession  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server-to-client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def serve(listener: socket.socket, total: int, frame: int) -> None:
    """Accept connections forever; each gets ``total`` bytes of stdout then status and close."""
    block = os.urandom(frame)
    data_frame = server_frame(0x2, b"\x01" + block)
    # Batch frames into ~1 MiB writes: one sendall per frame would make the server the limit.
    per_batch = max(1, (1 << 20) // len(data_frame))
    batch = data_frame * per_batch
    tail = server_frame(0x2, b'\x03{"metadata":{},"status":"Success"}') + server_frame(
        0x8, struct.pack("!H", 1000)
    )
    while True:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            headers = {}
            for line in request.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
            proto = next((p for p in (PROTOCOL_V5, PROTOCOL_V4) if p in offered), None)
            proto_line = f"Sec-WebSocket-Protocol: {proto}\r\n" if proto else ""
            accept = base64.b64encode(
                hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()
            ).decode()
            conn.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                    f"{proto_line}\r\n"
                ).encode()
            )
            frames = total // frame
            try:
                for _ in range(frames // per_batch):
                    conn.sendall(batch)
                for _ in range(frames % per_batch):
                    conn.sendall(data_frame)
                conn.sendall(tail)
                # Wait for the client's close frame, then close TCP first as a server must
                # (a client waits close_timeout for that).
                conn.settimeout(10)
                conn.recv(65536)
            except OSError:
                pass  # a client that went away early: serve the next one


async def baseline(url: str) -> int:
    """The floor: websockets' own recv loop, same options, no channel handling at all."""
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    n = 0
    async with connect(
        url,
        subprotocols=[Subprotocol(PROTOCOL_V5), Subprotocol(PROTOCOL_V4)],
        compression=None,
        max_size=None,
        proxy=None,
    ) as ws:
        async for msg in ws:
            n += len(msg)
    return n


async def ours(url: str) -> int:
    port = int(url.split(":")[2].split("/")[0])
    ep = ApiEndpoint(f"http://127.0.0.1:{port}", {"Authorization": "Bearer bench"})
    async with ExecSession(ep, "ns", "pod", "c", ["tcpdump", "-U", "-w", "-"]) as s:
        result = await s.run(lambda mv: None, lambda b: None)
    assert result.exit_code == 0, result
    return result.bytes_stdout


def measure(fn: Callable[[str], Coroutine[Any, Any, int]], url: str) -> tuple[int, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = asyncio.run(fn(url))
    return n, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="MiB to stream per round (1024)")
    ap.add_argument("--frame", type=int, default=65536, help="stdout bytes per frame (65536)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    total = args.mb << 20

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(listener, total, args.frame), daemon=True
    )
    server.start()
    url = f"ws://127.0.0.1:{port}/api/v1/namespaces/ns/pods/pod/exec?command=x&stdout=true"
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(args.rounds):
            for name, fn in (("baseline", baseline), ("execws", ours)):
                n, wall, cpu = measure(fn, url)
                payload = n if name == "execws" else n - n // (args.frame + 1)
                mbs = payload / wall / 1e6
                print(f"{name:9s} {payload / 1e6:8.0f} MB  {mbs:7.0f} MB/s  cpu {cpu:6.2f} s")
                if name not in best or mbs > best[name][0]:
                    best[name] = (mbs, cpu)
    finally:
        server.terminate()
    ours_mbs, ours_cpu = best["execws"]
    base_mbs, base_cpu = best["baseline"]
    print(
        f"best: execws {ours_mbs:.0f} MB/s (cpu {ours_cpu:.2f} s), "
        f"baseline {base_mbs:.0f} MB/s (cpu {base_cpu:.2f} s), "
        f"ratio execws/baseline {ours_mbs / base_mbs:.2f} (cpu ratio {ours_cpu / base_cpu:.2f})"
    )


if __name__ == "__main__":
    main()
