"""A TCP relay from the host's loopback into the node's network namespace.

``python -m tests.realcluster.relay --port P --netns-of PID --to ADDR:PORT``: binds 127.0.0.1:P
in the namespace it starts in (the host's), then moves itself into the network namespace of
PID, so every connection it opens to ADDR:PORT is made in there. Like the load balancer in
front of a managed cluster's API server, it only moves bytes (TLS ends at the API server), with
``splice`` so that the bytes never enter this process. It adds no link or route to the host.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
CHUNK = 1 << 20


def enter_netns(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the node's network namespace")
    finally:
        os.close(fd)


def pump(src: socket.socket, dst: socket.socket) -> None:
    """src -> dst through a pipe until src ends, then half-close dst."""
    read_end, write_end = os.pipe()
    try:
        while True:
            n = os.splice(src.fileno(), write_end, CHUNK, flags=os.SPLICE_F_MOVE)
            if n == 0:
                break
            while n:
                n -= os.splice(read_end, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
    except OSError:
        pass  # a reset on either side ends this direction; the other notices on its own
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def serve_connection(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.realcluster.relay")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--netns-of", type=int, required=True)
    ap.add_argument("--to", required=True, help="ADDR:PORT in the node's namespace")
    a = ap.parse_args(argv)
    host, _, port = a.to.rpartition(":")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", a.port))
    listener.listen(128)
    enter_netns(a.netns_of)  # the listener stays in the host's namespace
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(client, (host, int(port))),
                         daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
