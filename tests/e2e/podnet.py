"""Traffic inside test pods, run by Debian's /usr/bin/python3 in a pod's netns (stdlib only).

``serve``: an HTTP server on TCP 8080 and a UDP echo server on 9000, both dual-stack, bound to
``::`` explicitly (``python3 -m http.server`` hangs without DNS in a netns); prints ``ready``.
``traffic``: HTTP GETs, UDP datagrams and ICMP echo requests to the given addresses, bounded in
count and in time; ``--seconds`` repeats the mix until that much time has passed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

HTTP_PORT = 8080
UDP_PORT = 9000
DEADLINE_SECONDS = 120.0  # no generator ever runs longer than this


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        size = 300
        if "?size=" in self.path:
            size = min(int(self.path.split("?size=", 1)[1]), 1_000_000)
        body = (b"zsniff-e2e " * (size // 11 + 1))[:size]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _DualStackHTTP(socketserver.ThreadingMixIn, HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name = "e2e"  # no getfqdn(): there is no DNS in the netns
        self.server_port = HTTP_PORT


def _udp_echo(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def serve() -> None:
    httpd = _DualStackHTTP(("::", HTTP_PORT), _Handler)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", UDP_PORT))
    threading.Thread(target=_udp_echo, args=(udp,), daemon=True).start()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready", flush=True)
    # Lives until killed, or until its parent (the test) is gone.
    parent = os.getppid()
    start = time.monotonic()
    while time.monotonic() - start < 3600 and os.getppid() == parent:
        time.sleep(0.5)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping(address: str, seq: int, timeout: float) -> bool:
    v6 = ":" in address
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        kind = 128  # the kernel fills in the ICMPv6 checksum
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        kind = 8
    ident = os.getpid() & 0xFFFF
    payload = b"zsniff-e2e-ping-" + seq.to_bytes(4, "big")
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if not v6:
        header = struct.pack("!BBHHH", kind, 0, _checksum(header + payload), ident, seq)
    with sock:
        sock.settimeout(timeout)
        sock.sendto(header + payload, (address, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except OSError:
                return False
            if payload in data:
                return True
    return False


def _http(address: str, timeout: float, size: int) -> bool:
    conn = http.client.HTTPConnection(address, HTTP_PORT, timeout=timeout)
    try:
        conn.request("GET", f"/?size={size}")
        return conn.getresponse().read().startswith(b"zsniff-e2e")
    except OSError:
        return False
    finally:
        conn.close()


def _udp(address: str, seq: int, timeout: float, size: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        data = (b"zsniff-e2e-udp-%d " % seq * (size // 16 + 1))[:size]
        sock.sendto(data, (address, UDP_PORT))
        try:
            return sock.recv(65535) == data
        except OSError:
            return False


def traffic(args: argparse.Namespace) -> int:
    start = time.monotonic()
    deadline = start + min(args.seconds or DEADLINE_SECONDS, DEADLINE_SECONDS)
    failures = 0
    rounds = 0
    while True:
        for address in args.to:
            for _ in range(args.http):
                failures += not _http(address, args.timeout, args.size)
            for i in range(args.udp):
                failures += not _udp(address, rounds * 1000 + i, args.timeout, args.size)
            for i in range(args.icmp):
                failures += not _ping(address, (rounds * 1000 + i) & 0xFFFF, args.timeout)
        rounds += 1
        if not args.seconds or time.monotonic() >= deadline:
            break
        time.sleep(args.pause)
    print(f"rounds {rounds} failures {failures}", flush=True)
    return 1 if failures and args.strict else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve")
    t = sub.add_parser("traffic")
    t.add_argument("--to", action="append", required=True, help="address (repeatable)")
    t.add_argument("--http", type=int, default=0)
    t.add_argument("--udp", type=int, default=0)
    t.add_argument("--icmp", type=int, default=0)
    t.add_argument("--size", type=int, default=300, help="HTTP body / UDP payload bytes")
    t.add_argument("--seconds", type=float, default=0.0, help="repeat the mix this long")
    t.add_argument("--pause", type=float, default=0.05, help="pause between rounds")
    t.add_argument("--timeout", type=float, default=3.0)
    t.add_argument("--strict", action="store_true", help="exit 1 if any exchange failed")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve()
        return 0
    return traffic(args)


if __name__ == "__main__":
    sys.exit(main())
