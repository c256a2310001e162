"""Real traffic between pods, and tcpdump inside a pod (through kubectl exec) seeing it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .handle import ClusterHandle, kubectl_binary
from .kubectl_util import kubectl, kubectl_popen

pytestmark = pytest.mark.root

VERSION = "1.32"
PY = "/usr/bin/python3"  # Debian's python: the pyenv one is a shim needing $HOME and more
# socketserver instead of http.server.HTTPServer: the latter calls getfqdn() at bind, which
# hangs in a netns without DNS.
HTTP_SERVER = """
import socketserver, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from " + self.path.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    address_family = __import__("socket").AF_INET6
    def server_bind(self):
        self.socket.setsockopt(41, 26, 0)  # IPV6_V6ONLY off: serve v4 and v6
        super().server_bind()
S(("::", 8080), H).serve_forever()
"""
UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9999))
while True:
    d, a = s.recvfrom(65535); s.sendto(b"echo:" + d, a)
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"ping-udp", (sys.argv[1], 9999)); print(s.recvfrom(100)[0].decode())
"""


@pytest.fixture(scope="module")
def pods(cluster: ClusterHandle) -> tuple[str, str]:
    if not kubectl_binary(VERSION).exists():
        pytest.skip(f"kubectl {VERSION} not installed")
    cluster.create_pod("srv", containers=[
        {"name": "http", "image": "python", "command": [PY, "-c", HTTP_SERVER]},
        {"name": "udp", "image": "python", "command": [PY, "-c", UDP_ECHO]},
    ], node="node-a")
    cluster.create_pod("cli", node="node-b")
    yield "srv", "cli"
    cluster.delete_pod("srv")
    cluster.delete_pod("cli")


def _wait_listening(cluster: ClusterHandle, ip: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p = cluster.run_in_pod("default", "cli", ["curl", "-sf", "--noproxy", "*",
                                                   f"http://{ip}:8080/ready"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if p.wait() == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("http server in pod srv not listening")


def test_http_and_udp_between_pods_seen_by_tcpdump(cluster: ClusterHandle, kube_home: Path,
                                                    pods: tuple[str, str],
                                                    tmp_path: Path) -> None:
    srv_ip = cluster.pod_ip("default", "srv")
    srv_ip6 = cluster.pod_ip("default", "srv", family=6)
    cli_ip = cluster.pod_ip("default", "cli")
    _wait_listening(cluster, srv_ip)
    pcap = tmp_path / "srv.pcap"
    with open(pcap, "wb") as f:
        cap = kubectl_popen(cluster, kube_home, VERSION, "exec", "srv", "-c", "http", "--",
                            # bounded lifetime: an exec'd process outlives its client
                            "timeout", "-s", "INT", "8", "tcpdump", "-i", "eth0", "-U",
                            "-w", "-",
                            "tcp port 8080 or udp port 9999", stdout=f, stderr=subprocess.PIPE)
        try:
            time.sleep(1.5)  # tcpdump is listening once it has opened eth0
            r = kubectl(cluster, kube_home, VERSION, "exec", "cli", "--", "curl", "-s",
                        "--noproxy", "*", f"http://{srv_ip}:8080/v4")
            assert r.returncode == 0, r.stderr
            assert r.stdout == b"hello from /v4"
            r = kubectl(cluster, kube_home, VERSION, "exec", "cli", "--", "curl", "-s", "-g",
                        "--noproxy", "*", f"http://[{srv_ip6}]:8080/v6")
            assert r.stdout == b"hello from /v6", r.stderr
            r = kubectl(cluster, kube_home, VERSION, "exec", "cli", "--", PY, "-c",
                        UDP_CLIENT, srv_ip)
            assert r.stdout.strip() == b"echo:ping-udp", r.stderr
            cap.wait(timeout=15)
        finally:
            if cap.poll() is None:
                cap.terminate()
            cap.wait(timeout=10)
    # timeout(1) exits 124 when it had to stop tcpdump; tcpdump itself exits cleanly on SIGINT.
    assert cap.returncode in (0, 124), cap.stderr.read() if cap.stderr else ""
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
         "-e", "http.request.uri", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True).stdout
    lines = [ln.split("\t") for ln in fields.splitlines()]
    assert any(ln[0] == cli_ip and ln[2] == "/v4" for ln in lines), fields
    assert any(ln[1] and ln[2] == "/v6" for ln in lines), fields
    assert any(ln[0] == cli_ip and ln[3] == "9999" for ln in lines), fields
