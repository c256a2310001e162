"""End-to-end helpers: the real CLI as a subprocess against the local test cluster.

The session fixture ``cluster`` (tests/conftest.py) skips everything here when root or network
namespaces are missing. Pods are real network namespaces; traffic comes from
``tests/e2e/podnet.py`` run by Debian's python3 inside them; a reference tcpdump runs straight
in a pod's netns (``ClusterHandle.run_in_pod``) to compare what zsniff captured.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.formats.pcapng import Interface, NameRecords, PacketRecord, read_capture

HERE = Path(__file__).resolve().parent
PODNET = str(HERE / "podnet.py")
POD_PYTHON = "/usr/bin/python3"  # Debian's, not a pyenv shim: it runs inside the netns
# The capture image: the double ignores images (tcpdump comes from the host); the real cluster
# runs zsniff.test/capture:1, made from Debian's tcpdump (tests/realcluster/images.py).
IMAGE = "busybox"

REPO_ROOT = HERE.parents[1]
# The CLI of this checkout (PYTHONPATH below), not whichever copy an editable install points
# at: the `kubectl-zsniff` console script runs the same main() with the installed package.
ZSNIFF: list[str] = [
    sys.executable, "-c",
    "import sys; sys.argv[0] = 'kubectl-zsniff'; from kubectl_zsniff.cli.app import main; main()",
]
_names = itertools.count(1)
# Subcommands that take no --image (they inject nothing).
NOT_CAPTURING = ("view", "convert", "hosts", "enrich", "leftovers")


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{next(_names)}"


def zsniff_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    path = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path), **extra)
    env.pop("KUBECONFIG", None)
    return env


@dataclass
class Zsniff:
    """Runs the real CLI against the test cluster."""

    kubeconfig: Path
    home: Path
    image: str = IMAGE

    def argv(self, args: list[str]) -> list[str]:
        args = list(args)
        if "--kubeconfig" not in args:
            args += ["--kubeconfig", str(self.kubeconfig)]
        if "--image" not in args and not (args and args[0] in NOT_CAPTURING):
            args += ["--image", self.image]
        return [*ZSNIFF, *args]

    def run(self, args: list[str], *, timeout: float = 90, env: dict[str, str] | None = None,
            wrap: list[str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to the end; `wrap` is a command prefix (e.g. unshare) that execs the rest."""
        kw.setdefault("stdout", subprocess.PIPE)
        return subprocess.run([*(wrap or []), *self.argv(args)], stderr=subprocess.PIPE,
                              text=True,
                              timeout=timeout, env=env or zsniff_env(self.home), **kw)

    def start(self, args: list[str], *, env: dict[str, str] | None = None,
              **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(args), env=env or zsniff_env(self.home), **kw)


@pytest.fixture
def zsniff(cluster: Any, tmp_path: Path) -> Zsniff:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Zsniff(cluster.kubeconfig, home, cluster.capture_image)


# ---- pods and traffic -------------------------------------------------------------------


@dataclass
class PodPair:
    """A `web` pod serving HTTP (TCP 8080) and UDP echo (9000), and a `client` pod."""

    cluster: Any
    namespace: str
    web: str
    client: str
    web_ips: tuple[str, str]  # (IPv4, IPv6)
    client_ips: tuple[str, str]
    server: subprocess.Popen[Any] | None = None

    def traffic(self, *, http: int = 0, udp: int = 0, icmp: int = 0, size: int = 300,
                seconds: float = 0.0, pause: float = 0.05, families: tuple[int, ...] = (4, 6),
                strict: bool = False, to: list[str] | None = None) -> subprocess.Popen[str]:
        """Start a bounded generator in the client pod (to the web pod, or to the addresses
        `to`); `.wait()` it, `stop_process` it, or use `run_traffic`."""
        targets = to or [self.web_ips[0 if f == 4 else 1] for f in families]
        argv = [POD_PYTHON, PODNET, "traffic", "--http", str(http), "--udp", str(udp),
                "--icmp", str(icmp), "--size", str(size), "--seconds", str(seconds),
                "--pause", str(pause)]
        for target in targets:
            argv += ["--to", target]
        if strict:
            argv.append("--strict")
        return self.cluster.run_in_pod(self.namespace, self.client, argv,  # type: ignore[no-any-return]
                                       stdout=subprocess.PIPE, text=True)

    def run_traffic(self, timeout: float = 60, **kw: Any) -> str:
        proc = self.traffic(strict=True, **kw)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            stop_process(proc)
        assert proc.returncode == 0, f"traffic between the pods failed: {out}"
        return str(out)


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def make_pair(cluster: Any, namespace: str = "default", prefix: str = "e2e") -> PodPair:
    web, client = unique(f"{prefix}-web"), unique(f"{prefix}-client")
    cluster.create_pod(web, namespace, labels={"app": web})
    cluster.create_pod(client, namespace)
    pair = PodPair(cluster, namespace, web, client,
                   (cluster.pod_ip(namespace, web, 4), cluster.pod_ip(namespace, web, 6)),
                   (cluster.pod_ip(namespace, client, 4), cluster.pod_ip(namespace, client, 6)))
    pair.server = cluster.run_in_pod(namespace, web, [POD_PYTHON, PODNET, "serve"],
                                     stdout=subprocess.PIPE, text=True)
    line = read_line(pair.server.stdout, 20)
    assert line.strip() == "ready", f"the test server did not start: {line!r}"
    return pair


def drop_pair(pair: PodPair) -> None:
    if pair.server is not None:
        stop_process(pair.server)
    for pod in (pair.web, pair.client):
        pair.cluster.delete_pod(pod, pair.namespace)


@pytest.fixture
def fresh_pod(cluster: Any) -> Iterator[str]:
    """A pod of its own (in "default") that no capture has touched yet."""
    name = unique("fresh")
    cluster.create_pod(name)
    yield name
    cluster.delete_pod(name)


@pytest.fixture(scope="module")
def pair(cluster: Any) -> Iterator[PodPair]:
    """Two pods with a server, shared by the tests of one module."""
    p = make_pair(cluster)
    try:
        yield p
    finally:
        drop_pair(p)


@pytest.fixture(autouse=True)
def _reset_cluster(cluster: Any) -> Iterator[None]:
    """Every test starts and ends with no faults, ephemeral containers on, containerd."""
    cluster.reset()
    yield
    cluster.reset()


_PENDING_READS: dict[int, queue.Queue[str]] = {}


def read_line(stream: Any, timeout: float) -> str:
    """One line from a pipe, or '' after `timeout` seconds. A read that timed out stays
    pending (its daemon thread still waits for the line) and the next call takes its line:
    a line that arrives late is not lost."""
    box = _PENDING_READS.pop(id(stream), None)
    if box is None:
        box = queue.Queue()
        threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        _PENDING_READS[id(stream)] = box
        return ""


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# ---- the capture in the pod ---------------------------------------------------------------


def capture_processes(cluster: Any, namespace: str, pod: str) -> list[Any]:
    """zsniff's tcpdump (and its wrapper shells) in the pod: anything in a container whose
    command line mentions tcpdump. A reference tcpdump of the test has no container."""
    return [p for p in cluster.processes(namespace, pod)
            if p.container is not None and any("tcpdump" in a for a in p.argv)]


def assert_no_capture_left(cluster: Any, namespace: str, pod: str, timeout: float = 15) -> None:
    """No tcpdump of zsniff is left running in the pod (the wrapper's loop may need ~2 s)."""
    deadline = time.monotonic() + timeout
    left = capture_processes(cluster, namespace, pod)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = capture_processes(cluster, namespace, pod)
    assert not left, f"capture processes left in {namespace}/{pod}: {left}"


def _packet_socket_inodes(pid: int) -> set[str]:
    try:
        lines = Path(f"/proc/{pid}/net/packet").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {line.split()[-1] for line in lines if line.split()}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def wait_capture_live(cluster: Any, namespace: str, pod: str, timeout: float = 60,
                      count: int = 1, proc: subprocess.Popen[Any] | None = None) -> list[int]:
    """Wait until `count` zsniff tcpdumps in the pod hold an open packet socket (they capture
    from then on). Fails early when the CLI `proc` exits first."""

    def live() -> list[int]:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"zsniff exited with {proc.returncode} before capturing: {err}")
        pids = []
        for p in cluster.processes(namespace, pod):
            if p.container is None or not p.argv or not p.argv[0].endswith("tcpdump"):
                continue
            if _socket_inodes(p.pid) & _packet_socket_inodes(p.pid):
                pids.append(p.pid)
        return pids if len(pids) >= count else []

    pids: list[int] = wait_until(live, timeout, f"zsniff's tcpdump to capture in {pod}")
    time.sleep(0.2)  # the filter is attached right after the socket opens
    return pids


class RefCapture:
    """A reference tcpdump run directly in the pod's netns, to compare against."""

    def __init__(self, cluster: Any, namespace: str, pod: str, path: Path,
                 bpf: list[str] | None = None) -> None:
        self.path = path
        self.proc = cluster.run_in_pod(
            namespace, pod, ["tcpdump", "-i", "eth0", "-U", "-n", "-w", str(path), *(bpf or [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = read_line(self.proc.stderr, 20)
        assert "listening on" in line, f"reference tcpdump did not start: {line!r}"

    def stop(self) -> Path:
        stop_process(self.proc, signal.SIGINT)
        return self.path


# ---- reading captures ---------------------------------------------------------------------


@dataclass
class Capture:
    interfaces: list[Interface] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    packets: list[PacketRecord] = field(default_factory=list)


def load(path: Path | str) -> Capture:
    cap = Capture()
    for event in read_capture(path):
        if isinstance(event, PacketRecord):
            cap.packets.append(event)
        elif isinstance(event, Interface):
            cap.interfaces.append(event)
        elif isinstance(event, NameRecords):
            for address, names in event.records:
                if names:
                    cap.names[address] = names[0]
    return cap


def classify(frame: bytes) -> tuple[str, str, str] | None:
    """(protocol, src, dst) of an Ethernet frame carrying TCP, UDP or an ICMP echo; else None."""
    import ipaddress

    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        src = str(ipaddress.IPv4Address(frame[26:30]))
        dst = str(ipaddress.IPv4Address(frame[30:34]))
        if proto == 1 and frame[14 + ihl] in (0, 8):
            return "icmp", src, dst
        if proto in (6, 17):
            return ("tcp" if proto == 6 else "udp"), src, dst
    elif ethertype == 0x86DD and len(frame) >= 54:
        nxt = frame[20]
        src = str(ipaddress.IPv6Address(frame[22:38]))
        dst = str(ipaddress.IPv6Address(frame[38:54]))
        if nxt == 58 and frame[54] in (128, 129):
            return "icmpv6", src, dst
        if nxt in (6, 17):
            return ("tcp" if nxt == 6 else "udp"), src, dst
    return None


def pair_frames(packets: list[PacketRecord], addresses: set[str]) -> list[PacketRecord]:
    """The TCP/UDP/echo packets between two of `addresses` (no ARP, ND, router solicitations)."""
    out = []
    for p in packets:
        kind = classify(p.data)
        if kind and kind[1] in addresses and kind[2] in addresses:
            out.append(p)
    return out


def tshark_fields(path: Path, *fields: str, extra: list[str] | None = None) -> list[list[str]]:
    field_args = itertools.chain.from_iterable(("-e", f) for f in fields)
    proc = subprocess.run(["tshark", "-r", str(path), "-N", "n", "-o",
                           "nameres.use_external_name_resolver:FALSE", *(extra or []),
                           "-T", "fields", *field_args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


def capinfos_ok(path: Path) -> str:
    proc = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"capinfos rejects {path}: {proc.stderr}"
    return proc.stdout


def assert_clean_error(result: Any, status: int, *keywords: str, hint: bool = True) -> None:
    """One `error:` line with the keywords, a `hint:` line, the exit status, no traceback."""
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert "Traceback" not in err, err
    assert result.returncode == status, f"exit {result.returncode}, wanted {status}: {err}"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"wanted one error line: {err}"
    for word in keywords:
        assert word.lower() in errors[0].lower(), f"{word!r} not in {errors[0]!r}"
    if hint:
        hints = [line for line in err.splitlines() if line.startswith("hint: ")]
        assert hints and len(hints[0]) > len("hint: ") + 10, f"no useful hint: {err}"
