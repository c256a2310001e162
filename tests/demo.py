"""The README's first command: a capture on the embedded local test cluster.

Brings the local test cluster up, starts a small shop (a web server, a DNS-like UDP service, a
client in another namespace), captures the web pod with `kubectl zsniff` while the client talks
to it over HTTP, UDP and ICMP (IPv4 and IPv6), then shows the result with tshark: pod names, not
addresses. Leaves demo/capture.pcapng behind for Wireshark.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .cluster.handle import ClusterHandle

ROOT = Path(__file__).resolve().parents[1]
SERVER = "/usr/bin/python3"  # Debian's: the pyenv shim does not work inside a pod's netns

HTTP_SERVER = textwrap.dedent("""
    import http.server, socket, sys
    class V6(http.server.HTTPServer):
        address_family = socket.AF_INET6
        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.socket.bind(self.server_address)  # no getfqdn: pods have no DNS here
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from shop/web\\n"
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    V6(("::", 8080), H).serve_forever()
""")

UDP_ECHO = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 5353))
    while True:
        data, peer = s.recvfrom(2048); s.sendto(data, peer)
""")

CLIENT = textwrap.dedent("""
    import socket, sys, time, urllib.request
    web4, web6 = sys.argv[1], sys.argv[2]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for i in range(int(sys.argv[3])):
        for url in (f"http://{web4}:8080/", f"http://[{web6}]:8080/"):
            try:
                opener.open(url, timeout=2).read()
            except OSError:
                pass
        for host, family in ((web4, socket.AF_INET), (web6, socket.AF_INET6)):
            s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(1)
            s.sendto(b"lookup web.shop", (host, 5353))
            try:
                s.recvfrom(2048)
            except OSError:
                pass
            s.close()
        time.sleep(0.5)
""")


def kubectl_zsniff() -> list[str]:
    found = shutil.which("kubectl-zsniff")
    if found:
        return [found]
    return [sys.executable, "-c", "from kubectl_zsniff.cli.app import main; main()"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", default=str(ROOT / ".zsniff-cluster"))
    parser.add_argument("--out", default=str(ROOT / "demo" / "capture.pcapng"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("demo: the local test cluster needs root (network namespaces)", file=sys.stderr)
        return 1

    state = Path(args.state)
    subprocess.run([sys.executable, "-m", "tests.cluster", "up", "--state", str(state)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    try:
        cluster = ClusterHandle(state)
        for ns in ("shop", "tools"):
            cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for name in ("web", "client"):
            cluster.delete_pod(name, "shop" if name == "web" else "tools")
        cluster.create_pod("web", "shop", image="python:3.12-slim", labels={"app": "web"},
                           containers=[
                               {"name": "http", "image": "python:3.12-slim",
                                "command": [SERVER, "-c", HTTP_SERVER]},
                               {"name": "dns", "image": "python:3.12-slim",
                                "command": [SERVER, "-c", UDP_ECHO]},
                           ])
        cluster.apply({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"selector": {"app": "web"},
                                "ports": [{"port": 80, "targetPort": 8080}]}})
        cluster.create_pod("client", "tools", command=["sleep", "3600"])
        web4, web6 = cluster.pod_ip("shop", "web", 4), cluster.pod_ip("shop", "web", 6)

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KUBECONFIG=str(state / "kubeconfig"))
        capture_cmd = [*kubectl_zsniff(), "web", "-n", "shop", "-d", f"{args.seconds:g}s",
                       # --force: a second demo replaces the first one's capture.
                       "-w", str(out), "--force", "--image", "docker.io/nicolaka/netshoot:v0.13",
                       "ip", "or", "(ip6", "and", "not", "ip6", "multicast)"]
        print("$ kubectl zsniff " + " ".join(capture_cmd[len(kubectl_zsniff()):]), flush=True)
        capture = subprocess.Popen(capture_cmd, env=env)
        time.sleep(2.0)
        rounds = max(1, int((args.seconds - 3) / 0.6))
        client = cluster.run_in_pod("tools", "client",
                                    [SERVER, "-c", CLIENT, web4, web6, str(rounds)])
        cluster.run_in_pod("tools", "client", ["ping", "-c", "3", "-i", "0.3", web4],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
            if shutil.which("ping") else None
        client.wait(timeout=args.seconds + 30)
        status = capture.wait(timeout=args.seconds + 120)
        if status != 0:
            print(f"demo: kubectl zsniff exited with {status}", file=sys.stderr)
            return status

        print(f"\n$ tshark -r {out} -N n   (first rows)")
        rows = subprocess.run(["tshark", "-r", str(out), "-N", "n"], capture_output=True,
                              text=True, check=False).stdout.splitlines()
        print("\n".join(rows[:12]) + (f"\n... {len(rows)} packets" if len(rows) > 12 else ""))
        print(f"\nOpen it in Wireshark with names: wireshark -N n -r {out}")
        print("or turn on View > Name Resolution > Resolve Network Addresses.")
        return 0
    finally:
        if not args.keep:
            subprocess.run([sys.executable, "-m", "tests.cluster", "down", "--state", str(state)],
                           cwd=ROOT, check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
