"""Pods as network namespaces with real processes.

Everything this module creates carries the instance prefix (``zst`` + 4 hex digits derived from
the state dir), so ``down`` can clean up after a crash by name alone and two clusters with
different state dirs never touch each other.  The bridge lives in a dedicated "node network"
netns: no test traffic ever reaches the host's own namespace or network.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
POD_V4 = ipaddress.ip_network("10.244.0.0/16")
POD_V6 = ipaddress.ip_network("fd00:10:244::/64")
GATEWAY_V4 = "10.244.0.1"
GATEWAY_V6 = "fd00:10:244::1"
NODE_ADDRS = {"node-a": ("10.244.0.2", "fd00:10:244::2"),
              "node-b": ("10.244.0.3", "fd00:10:244::3")}

# containerd's default OCI spec capabilities (oci/spec.go defaultUnixCaps).
CONTAINERD_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
# CRI-O's default_capabilities since 1.18: no NET_RAW, MKNOD, SYS_CHROOT, AUDIT_WRITE, SETFCAP.
CRIO_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP",
    "NET_BIND_SERVICE", "KILL",
)
RUNTIME_CAPS = {"containerd": CONTAINERD_CAPS, "cri-o": CRIO_CAPS}

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def prefix_for(state_dir: Path) -> str:
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:4]
    return f"zst{digest}"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def netns_list(prefix: str) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def _proc_netns_inode(pid: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")  # "net:[4026532...]"
        return int(link[5:-1])
    except (OSError, ValueError):
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Every live process whose network namespace is one of ``inodes`` (the truth, from /proc)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        ino = _proc_netns_inode(int(entry))
        if ino is not None and ino in inodes:
            out.append(int(entry))
    return sorted(out)


@dataclass(frozen=True)
class ProcStat:
    pid: int
    sid: int
    pgid: int
    argv: list[str]


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()  # fields after "pid (comm)"
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1]]
    if rest[0] == "Z":
        return None  # a zombie is no longer running anything
    return ProcStat(pid, int(rest[3]), int(rest[2]), argv)


def kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_netns_processes(inodes: set[int], grace: float) -> None:
    pids = pids_in_netns(inodes)
    if not pids:
        return
    kill_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pids_in_netns(inodes):
            return
        time.sleep(0.05)
    kill_pids(pids_in_netns(inodes), signal.SIGKILL)
    for _ in range(100):
        if not pids_in_netns(inodes):
            return
        time.sleep(0.02)


class Network:
    """The node network netns with its bridge, and per-pod namespaces attached to it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.node_ns = f"{prefix}-node"
        self.bridge = f"{prefix}br"

    def setup(self) -> None:
        run("ip", "netns", "add", self.node_ns)
        n = ("ip", "-n", self.node_ns)
        run(*n, "link", "set", "lo", "up")
        run(*n, "link", "add", self.bridge, "type", "bridge")
        # Node addresses live on the bridge: they are the nodes' InternalIPs and the gateway.
        run(*n, "addr", "add", f"{GATEWAY_V4}/16", "dev", self.bridge)
        run(*n, "addr", "add", f"{GATEWAY_V6}/64", "dev", self.bridge, "nodad")
        for v4, v6 in NODE_ADDRS.values():
            run(*n, "addr", "add", f"{v4}/16", "dev", self.bridge)
            run(*n, "addr", "add", f"{v6}/64", "dev", self.bridge, "nodad")
        run(*n, "link", "set", self.bridge, "up")

    def pod_ns(self, index: int) -> str:
        return f"{self.prefix}-p{index}"

    def add_pod(self, index: int) -> tuple[str, str, str]:
        """Create netns + veth for pod ``index``; returns (netns, ipv4, ipv6)."""
        ns = self.pod_ns(index)
        v4 = str(POD_V4.network_address + 256 + index)  # 10.244.1.0 upward
        v6 = str(POD_V6.network_address + 0xA0000 + index)
        host_if = f"{self.prefix}v{index}"
        run("ip", "netns", "add", ns)
        # Create the pair inside the node netns with the peer directly in the pod netns, so no
        # link ever appears in the host's namespace.
        run("ip", "-n", self.node_ns, "link", "add", host_if, "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", self.node_ns, "link", "set", host_if, "master", self.bridge, "up")
        p = ("ip", "-n", ns)
        run(*p, "link", "set", "lo", "up")
        run(*p, "addr", "add", f"{v4}/16", "dev", "eth0")
        run(*p, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
        run(*p, "link", "set", "eth0", "up")
        run(*p, "route", "add", "default", "via", GATEWAY_V4)
        run(*p, "-6", "route", "add", "default", "via", GATEWAY_V6)
        return ns, v4, v6

    def remove_pod(self, index: int) -> None:
        ns = self.pod_ns(index)
        ino = netns_inode(ns)
        if ino is not None:
            kill_netns_processes({ino}, grace=0.5)
        run("ip", "netns", "del", ns, check=False)


def cleanup_prefix(prefix: str) -> None:
    """Remove every netns (and thereby veth/bridge) and process of the prefix; idempotent."""
    names = netns_list(prefix)
    inodes = {i for i in (netns_inode(n) for n in names) if i is not None}
    if inodes:
        kill_netns_processes(inodes, grace=1.0)
    for n in names:
        run("ip", "netns", "del", n, check=False)
    # Links in the host namespace are never created, but remove strays from older layouts.
    out = run("ip", "-o", "link", "show", check=False).stdout
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                run("ip", "link", "del", name, check=False)


# ---- capabilities and process start ----------------------------------------------------------

@dataclass(frozen=True)
class SecurityProfile:
    caps: frozenset[str] | None  # None = privileged (everything)
    uid: int | None = None
    gid: int | None = None
    no_new_privs: bool = False


def _norm_cap(c: str) -> str:
    c = c.upper()
    return c[4:] if c.startswith("CAP_") else c


KNOWN_CAPS = frozenset(
    c.upper() for c in run("setpriv", "--list-caps", check=False).stdout.split()
)


def profile_for(container: dict, pod_spec: dict, default_caps: tuple[str, ...]) -> SecurityProfile:
    sc = container.get("securityContext") or {}
    psc = pod_spec.get("securityContext") or {}
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    gid = sc.get("runAsGroup", psc.get("runAsGroup"))
    nnp = sc.get("allowPrivilegeEscalation") is False
    if sc.get("privileged"):
        return SecurityProfile(None, uid, gid, nnp)
    caps_sc = sc.get("capabilities") or {}
    caps = set(default_caps)
    for c in caps_sc.get("add") or []:
        caps.add(_norm_cap(c))
    drops = {_norm_cap(c) for c in caps_sc.get("drop") or []}
    if "ALL" in drops:
        caps = {_norm_cap(c) for c in caps_sc.get("add") or []}  # add wins over drop ALL
    else:
        caps -= drops
    if "ALL" in caps:
        caps = set(KNOWN_CAPS)
    return SecurityProfile(frozenset(c for c in caps if c in KNOWN_CAPS), uid, gid, nnp)


def setpriv_args(p: SecurityProfile) -> list[str]:
    args = ["setpriv"]
    if p.caps is not None:
        # For root, execve grants permitted = inheritable | bounding: clearing the inheritable
        # set and limiting the bounding set makes the bounding set exactly the capability set.
        bset = ",".join(["-all"] + [f"+{c.lower()}" for c in sorted(p.caps)])
        args += ["--inh-caps=-all", f"--bounding-set={bset}"]
    if p.uid is not None:
        args += [f"--reuid={p.uid}", f"--regid={p.gid if p.gid is not None else p.uid}",
                 "--clear-groups"]
    if p.no_new_privs:
        args.append("--no-new-privs")
    return args


def container_env(container: dict, hostname: str) -> dict[str, str]:
    env = {"PATH": BASE_PATH, "HOSTNAME": hostname, "HOME": "/root"}
    for e in container.get("env") or []:
        if "name" in e and "value" in e:
            env[e["name"]] = str(e["value"])
    return env


def spawn(netns: str, argv: list[str], profile: SecurityProfile, env: dict[str, str],
          cwd: str = "/", stdin: int | None = subprocess.DEVNULL, stdout: int | None = None,
          stderr: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the pod netns; nsenter and setpriv exec, so the pid is the real one.

    Each process gets its own session (hence process group), which is how the cluster knows
    which container an exec'd child belongs to and how it kills a whole container.
    """
    cmd = ["nsenter", f"--net={NETNS_DIR / netns}", *setpriv_args(profile), "--", *argv]
    return subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                            cwd=cwd if os.path.isdir(cwd) else "/", start_new_session=True,
                            close_fds=True)
