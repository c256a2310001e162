"""The node's namespaces, its processes and everything needed to remove them again.

The whole node lives in one network namespace and one private mount namespace, held open by a
``sleep`` started with ``unshare``: etcd, the control plane, containerd and its shims, kubelet.
The CNI bridge, pod routes, iptables rules, pod network namespaces, overlay and tmpfs mounts
are all made in there, so none of them touches the host, and all of them vanish with the
namespaces once no process is left in them. The host sees the API server only through a relay
on 127.0.0.1 (relay.py). Cleaning up after a ``kill -9`` therefore means killing every process
in those namespaces or in the node's cgroups and removing the cgroups and the state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

NODE_NAME = "zsniff-node"
NODE_IPV4 = "10.246.0.1"
NODE_IPV6 = "fd00:10:246::1"
POD_SUBNET_V4 = "10.246.1.0/24"
POD_SUBNET_V6 = "fd00:10:246:1::/64"
SERVICE_SUBNET = "10.96.0.0/16"
APISERVER_PORT = 6443
CGROUP_ROOT = Path("/sys/fs/cgroup")


def prefix_for(state_dir: Path) -> str:
    """`zsr` + 4 hex digits of the state dir: names this node's cgroups and links."""
    return "zsr" + hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:4]


@dataclass
class NodeRecord:
    """What `down` needs to find everything again, written before anything is started."""

    prefix: str
    holder_pid: int
    net_inode: int
    mnt_inode: int
    relay_port: int
    pids: dict[str, int]
    stream_idle_timeout: str = "4h"
    commands: dict[str, list[str]] = field(default_factory=dict)  # to restart a component

    def save(self, state: Path) -> None:
        tmp = state / "node.json.partial"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(state / "node.json")

    @classmethod
    def load(cls, state: Path) -> NodeRecord | None:
        try:
            return cls(**json.loads((state / "node.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None


def ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")  # "net:[4026532...]"
        return int(link[link.index("[") + 1:-1])
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def start_holder(log: Path) -> subprocess.Popen[bytes]:
    """A process whose only job is to keep the node's net and mount namespaces alive."""
    with open(log, "ab") as logf:
        return subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private",
                                 "sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)


def enter(holder_pid: int) -> list[str]:
    """Command prefix that runs a program in the node's network and mount namespaces only
    (never `ip netns exec`: it remounts /sys, which hides the cgroup hierarchies)."""
    return ["nsenter", "-t", str(holder_pid), "--net", "--mount", "--"]


def prepare_namespaces(holder_pid: int, state: Path) -> None:
    """Loopback, the node's address, and private /run, /var/log and /etc/resolv.conf."""
    resolv = state / "resolv.conf"
    # Image pulls of names that were never imported must fail for real, and fast, without a
    # packet leaving the machine: the node's resolver is its own loopback, where nothing listens.
    resolv.write_text("nameserver 127.0.0.1\n")
    script = "\n".join([
        "set -e",
        "ip link set lo up",
        # The node's address sits on its loopback (this kernel has no dummy links); it is
        # still an ordinary address to kubelet, which refuses only 127.0.0.0/8 and ::1.
        f"ip addr add {NODE_IPV4}/32 dev lo",
        f"ip -6 addr add {NODE_IPV6}/128 dev lo nodad",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        "mount -t tmpfs -o mode=755 zsniff-run /run",
        "mkdir -p /run/netns /run/containerd",
        "mount -t tmpfs -o mode=755 zsniff-log /var/log",
        f"mount --bind {resolv} /etc/resolv.conf",
    ])
    subprocess.run([*enter(holder_pid), "sh", "-c", script], check=True, capture_output=True,
                   text=True)


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the unified one)."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2"):
            out.append(Path(fields[1]))
    return out


def make_cgroup_root(prefix: str) -> None:
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / prefix
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent_value = hierarchy / knob
            if parent_value.exists() and not (path / knob).read_text().strip():
                (path / knob).write_text(parent_value.read_text())


def _cgroup_dirs(prefix: str) -> Iterator[Path]:
    """The node's cgroups, deepest first."""
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / prefix
        if not top.is_dir():
            continue
        for root, dirs, _ in os.walk(top, topdown=False):
            for d in dirs:
                yield Path(root) / d
        yield top


def node_pids(record: NodeRecord | None, prefix: str) -> set[int]:
    """Every live process of this node: in its namespaces, its cgroups, or recorded by pid."""
    host_net, host_mnt = ns_inode("self", "net"), ns_inode("self", "mnt")
    pids: set[int] = set()
    if record:
        wanted = {("net", record.net_inode), ("mnt", record.mnt_inode)}
        wanted -= {("net", host_net), ("mnt", host_mnt)}  # never the host's own
        for entry in os.listdir("/proc"):
            if entry.isdigit() and any(ns_inode(entry, k) == i for k, i in wanted):
                pids.add(int(entry))
        pids.update(p for p in (record.holder_pid, *record.pids.values()) if alive(p))
    for cgroup in _cgroup_dirs(prefix):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
    pids.discard(os.getpid())
    return {p for p in pids if alive(p)}


def started_before(pid: int, moment: float) -> bool:
    """Whether process `pid` started before `moment` (time.time()); False once it is gone.
    A namespace is freed with its last process, and the kernel may give its inode number to
    the next namespace made (another cluster's, another agent's): a process that started
    after a node's teardown began is not that node's, whatever its namespace inode says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration):
        return False
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after comm
    return boot + ticks / os.sysconf("SC_CLK_TCK") < moment


def kill_all(record: NodeRecord | None, prefix: str, timeout: float = 20) -> list[int]:
    """SIGKILL every process of the node until none is left; returns those that would not go."""
    deadline = time.monotonic() + timeout
    while True:
        pids = node_pids(record, prefix)
        if not pids or time.monotonic() > deadline:
            return sorted(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroups(prefix: str, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for cgroup in _cgroup_dirs(prefix):
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(cgroup)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
