"""A slow API server link: kubectl exec + tcpdump against zsniff and zsniff --compress, on the
real Kubernetes of tests/realcluster (not a test; timings never fail anything).

The link: inside the node's network namespace (never the host's), the API server's side of
its connections (TCP source port 6443 on the namespace's `lo`, where the relay from the host's
127.0.0.1 meets kube-apiserver) goes through an HTB class of --rate-mbit. The traffic: a paced
UDP stream of JSON-lines text (--traffic-mbs MB/s of pcap, faster than the link) from the
client pod to the web pod, sent by this machine's python in the client pod's network namespace.
Every client captures the web pod's `udp port 9999` with the same tcpdump options
(`-s 262144 -B 8192 --immediate-mode -U -w -`) in the same capture container:

- ``kubectl``: ``kubectl exec web -c zsniff-XXXX -- timeout -s INT SECS tcpdump ...`` (the
  kubectl built with the cluster), stdout to a file;
- ``kubectl (PATH)``: the same with the kubectl on PATH (its real file), when there is one;
- ``zsniff``: ``kubectl-zsniff web -f 'udp port 9999' -d SECS --format pcap -w FILE``;
- ``zsniff --compress``: the same with --compress.

Per client and round: packets sent, packets in the file, kernel drops tcpdump reported, MB over
the shaped link (the HTB class's byte counter) and MB/s over the capture's time, the capture
container's CPU seconds (its cgroup's cpuacct.usage: tcpdump, and gzip with --compress).
Rounds rotate the order of the clients. Ratios are against kubectl (built) in the same round.
Also printed: both kubectls' versions, and the pipe size a container's root gets right now
(2 pages once uid 0 is over fs.pipe-user-pages-soft machine-wide: then the pod's reads are
8 KiB at most, which is what --compress's pump has to live with).

    sudo python bench/bench_slowlink.py [--rate-mbit 20] [--traffic-mbs 8] [--seconds 15]
                                        [--rounds 3] [--cpu-request 1] [--state DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLI = [sys.executable, "-c",
       "import sys; sys.argv[0] = 'kubectl-zsniff'; "
       "from kubectl_zsniff.cli.app import main; main()"]
PORT = 9999
FILTER = f"udp port {PORT}"
TCPDUMP = ["tcpdump", "-i", "eth0", "-s", "262144", "-B", "8192", "--immediate-mode", "-U",
           "-w", "-", FILTER]
CLIENTS = ("kubectl", "kubectl (PATH)", "zsniff", "zsniff --compress")
BASE = "kubectl"  # ratios are against the kubectl built with the cluster, same round

# Runs in the client pod's network namespace: UDP datagrams of JSON-lines text to the web pod,
# paced to RATE bytes/s of payload for SECONDS; prints how many it sent.
SENDER = r"""
import json, socket, sys, time
dst, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lines = b"".join(json.dumps({"id": i, "user": f"user{i}", "email": f"user{i}@example.com",
                             "active": i % 3 == 0, "score": (i * 7919) % 1000 / 10}).encode()
                 + b"\n" for i in range(20000))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
size, sent, at = 1400, 0, 0
start = time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * rate / size) + 1
    while sent < due:
        s.sendto(lines[at:at + size], (dst, 9999))
        at = (at + size) % (len(lines) - size)
        sent += 1
    time.sleep(0.001)
print(sent)
"""


def node_tc(holder_pid: int, *args: str, check: bool = True) -> str:
    """tc in the node's network namespace (never the host's)."""
    out = subprocess.run(["nsenter", f"--net=/proc/{holder_pid}/ns/net", "tc", *args],
                         capture_output=True, text=True, check=check, timeout=10)
    return out.stdout


def shape_api_link(holder_pid: int, rate_mbit: float) -> None:
    node_tc(holder_pid, "qdisc", "del", "dev", "lo", "root", check=False)
    node_tc(holder_pid, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default",
            "10")
    node_tc(holder_pid, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
            "rate", "10gbit")
    node_tc(holder_pid, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
            "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit")
    node_tc(holder_pid, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
            "1", "u32", "match", "ip", "sport", "6443", "0xffff", "flowid", "1:20")


def kubectl_version(binary: str) -> str:
    out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True,
                         text=True, timeout=30).stdout
    try:
        return str(json.loads(out)["clientVersion"]["gitVersion"])
    except (ValueError, KeyError):
        return "unknown version"


def container_root_pipe_size() -> str:
    """The pipe size a root without CAP_SYS_RESOURCE/CAP_SYS_ADMIN (a container's root) gets
    on this machine now: 2 pages once uid 0 is over fs.pipe-user-pages-soft machine-wide."""
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin,-sys_resource", sys.executable, "-c",
         "import fcntl, os; r, w = os.pipe(); print(fcntl.fcntl(r, 1032))"],
        capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() or f"unknown ({probe.stderr.strip()[:80]})"


def link_bytes(holder_pid: int) -> int:
    text = node_tc(holder_pid, "-s", "class", "show", "dev", "lo", "classid", "1:20")
    match = re.search(r"Sent (\d+) bytes", text)
    return int(match.group(1)) if match else 0


def pcap_packets(path: Path) -> int:
    data = path.read_bytes()
    at, count = 24, 0
    while at + 16 <= len(data):
        caplen = int.from_bytes(data[at + 8:at + 12], "little")
        if at + 16 + caplen > len(data):
            break
        at += 16 + caplen
        count += 1
    return count


def container_cpu(handle: Any, pod: str, container: str) -> float:
    """CPU seconds of the capture container's cgroup (cgroup v1 cpuacct)."""
    status = handle.get_pod(pod, "default")["status"]
    cid = next(s["containerID"].split("://", 1)[-1]
               for s in status.get("ephemeralContainerStatuses", []) if s["name"] == container)
    for root, dirs, _ in os.walk("/sys/fs/cgroup/cpuacct"):
        for d in dirs:
            if cid in d:
                return int(Path(root, d, "cpuacct.usage").read_text()) / 1e9
    return float("nan")


def drops_in(text: str) -> int | None:
    match = re.search(r"(\d[\d,]*) (?:packets? )?dropped by (?:the )?kernel", text)
    return int(match.group(1).replace(",", "")) if match else None


def one_capture(client: str, handle: Any, kubectl: str, path_kubectl: str, container: str,
                web_ip: str, args: argparse.Namespace, out: Path, env: dict[str, str]
                ) -> dict[str, Any]:
    capture_seconds = int(args.seconds + args.drain)
    if client.startswith("kubectl"):
        binary = kubectl if client == "kubectl" else path_kubectl
        argv = [binary, "--kubeconfig", str(handle.kubeconfig), "exec", "web", "-c", container,
                "--", "timeout", "-s", "INT", str(capture_seconds), *TCPDUMP]
    else:
        argv = [*CLI, "web", "-n", "default", "-f", FILTER, "-d", f"{capture_seconds}s",
                "--format", "pcap", "-w", str(out), "--force"]
        if client.endswith("--compress"):
            argv.append("--compress")
    pipes = container_root_pipe_size()  # it moves with what else runs on the machine
    cpu0 = container_cpu(handle, "web", container)
    link0 = link_bytes(handle.record.holder_pid)
    started = time.monotonic()
    with open(out, "wb") as sink:
        capture = subprocess.Popen(argv, stdout=sink if client.startswith("kubectl")
                                   else subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env)
        time.sleep(3.0)  # tcpdump listening (the container exists: no injection)
        sender = handle.run_in_pod("default", "client", [sys.executable, "-c", SENDER, web_ip,
                                                          str(args.traffic_mbs * 1e6),
                                                          str(args.seconds)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent_out, sent_err = sender.communicate(timeout=args.seconds + 60)
        _, err = capture.communicate(timeout=capture_seconds + 120)
    elapsed = time.monotonic() - started
    link = link_bytes(handle.record.holder_pid) - link0
    cpu = container_cpu(handle, "web", container) - cpu0
    stderr = err.decode(errors="replace")
    if not sent_out.strip():
        raise SystemExit(f"the sender failed: {sent_err}")
    return {"client": client, "sent": int(sent_out), "delivered": pcap_packets(out),
            "drops": drops_in(stderr), "link_mb": link / 1e6, "link_mbs": link / 1e6 / elapsed,
            "pcap_mb": out.stat().st_size / 1e6, "cpu": cpu, "seconds": elapsed,
            "exit": capture.returncode, "pipes": pipes,
            "stderr_tail": stderr.strip().splitlines()[-3:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate-mbit", type=float, default=20.0)
    ap.add_argument("--traffic-mbs", type=float, default=8.0, help="pod traffic, MB/s")
    ap.add_argument("--seconds", type=float, default=15.0, help="traffic per capture")
    ap.add_argument("--drain", type=float, default=10.0,
                    help="the capture runs this long after the traffic ends")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-request", default="",
                    help="the web pod's CPU request (e.g. 1): its cgroup's CPU share, which "
                    "the capture container's processes run under; none: BestEffort")
    ap.add_argument("--state", type=Path, default=None, help="a running real cluster to use")
    ap.add_argument("--json", type=Path, default=None, help="also write every run here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the test cluster)", file=sys.stderr)
        return 2
    from tests.realcluster.build import ensure_binaries
    from tests.realcluster.handle import RealClusterHandle

    kubectl = ensure_binaries()["kubectl"]
    # The kubectl on PATH as a user has it (a second, independent peer), when there is one.
    found = shutil.which("kubectl")
    path_kubectl = os.path.realpath(found) if found else ""
    clients = tuple(c for c in CLIENTS if c != "kubectl (PATH)" or path_kubectl)
    own_state = args.state is None
    state = args.state or Path(tempfile.mkdtemp(prefix="zsniff-slowlink-"))
    if own_state:
        subprocess.run([sys.executable, "-m", "tests.realcluster", "up", "--state", str(state)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    handle = RealClusterHandle(state)
    home = Path(tempfile.mkdtemp(prefix="zsniff-slowlink-home-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home),
           "KUBECONFIG": str(handle.kubeconfig)}
    work = Path(tempfile.mkdtemp(prefix="zsniff-slowlink-out-", dir="/var/tmp"))
    runs: list[dict[str, Any]] = []
    try:
        handle.create_pod("client")
        web: dict[str, Any] = {"name": "main", "image": handle.capture_image,
                               "command": ["sleep", "3600"], "imagePullPolicy": "IfNotPresent"}
        if args.cpu_request:
            web["resources"] = {"requests": {"cpu": args.cpu_request},
                                "limits": {"cpu": args.cpu_request}}
        handle.create_pod("web", containers=[web])
        web_ip = handle.get_pod("web", "default")["status"]["podIP"]
        # One short capture injects the capture container every client then shares.
        subprocess.run([*CLI, "web", "-n", "default", "--count", "1", "-d", "3s", "-w",
                        str(work / "warm.pcap"), "-q"], env=env, timeout=120, check=False)
        status = handle.get_pod("web", "default")["status"]
        container = next(s["name"] for s in status.get("ephemeralContainerStatuses", [])
                         if s["name"].startswith("zsniff-"))
        shape_api_link(handle.record.holder_pid, args.rate_mbit)
        print(f"link: {args.rate_mbit:g} Mbit/s (API server -> client, node netns lo); "
              f"traffic: {args.traffic_mbs:g} MB/s of UDP JSON text for {args.seconds:g} s; "
              f"capture container {container}; web pod CPU request "
              f"{args.cpu_request or 'none (BestEffort)'}; load {os.getloadavg()[0]:.1f}",
              flush=True)
        print(f"kubectl: {kubectl} {kubectl_version(kubectl)}"
              + (f"; kubectl (PATH): {path_kubectl} {kubectl_version(path_kubectl)}"
                 if path_kubectl else "; no kubectl on PATH")
              + f"; a container root's pipes now: {container_root_pipe_size()} bytes",
              flush=True)
        for round_no in range(args.rounds):
            turn = round_no % len(clients)
            order = clients[turn:] + clients[:turn]
            for client in order:
                out = work / f"{client.replace(' ', '').replace('-', '')}.pcap"
                m = one_capture(client, handle, kubectl, path_kubectl, container, web_ip, args,
                                out, env)
                m["round"] = round_no + 1
                runs.append(m)
                print(f"round {round_no + 1} {client:18s} sent {m['sent']:6d} delivered "
                      f"{m['delivered']:6d} ({m['delivered'] / m['sent']:6.1%}) kernel drops "
                      f"{m['drops']!s:>6} link {m['link_mb']:6.1f} MB {m['link_mbs']:5.2f} MB/s "
                      f"pcap {m['pcap_mb']:6.1f} MB pod CPU {m['cpu']:5.2f} s pipes {m['pipes']} "
                      f"exit {m['exit']}",
                      flush=True)
                out.unlink(missing_ok=True)
        print("\nmedian over rounds (ratio against kubectl in the same round):")
        for client in clients:
            mine = [r for r in runs if r["client"] == client]
            ratios = []
            for r in mine:
                base = next(k for k in runs
                            if k["client"] == BASE and k["round"] == r["round"])
                ratios.append(r["delivered"] / max(1, base["delivered"]))
            share = [r["delivered"] / r["sent"] for r in mine]
            print(f"{client:18s} delivered {statistics.median(share):6.1%} of sent "
                  f"(min {min(share):.1%}, max {max(share):.1%}); x{statistics.median(ratios):.2f} "
                  f"kubectl's packets (min {min(ratios):.2f}, max {max(ratios):.2f}); "
                  f"drops {statistics.median([r['drops'] or 0 for r in mine]):.0f}; link "
                  f"{statistics.median([r['link_mbs'] for r in mine]):.2f} MB/s; pod CPU "
                  f"{statistics.median([r['cpu'] for r in mine]):.2f} s")
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1))
    finally:
        node_tc(handle.record.holder_pid, "qdisc", "del", "dev", "lo", "root", check=False)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        if own_state:
            subprocess.run([sys.executable, "-m", "tests.realcluster", "down", "--state",
                            str(state)], cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
