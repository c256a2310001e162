"""Real kubectl (several versions) against the test cluster: kubectl is the judge."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from .handle import ClusterHandle, kubectl_binary
from .kubectl_util import WEBSOCKET_VERSIONS, kubectl, kubectl_popen

pytestmark = pytest.mark.root

VERSIONS = [pytest.param(v, id=f"kubectl-{v}") for v in WEBSOCKET_VERSIONS
            if kubectl_binary(v).exists()]
BIG = 100_000_000


def _slug(version: str) -> str:
    return version.replace(".", "-")


@pytest.fixture(scope="module")
def target(cluster: ClusterHandle) -> str:
    cluster.create_pod("kt-target", command=["sleep", "3600"], labels={"app": "kt"})
    yield "kt-target"
    cluster.delete_pod("kt-target")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """100 MB of deterministic pseudo-random bytes and their sha256."""
    path = tmp_path_factory.mktemp("big") / "data.bin"
    data = random.Random(20240601).randbytes(BIG)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
def test_get_nodes(cluster: ClusterHandle, kube_home: Path, version: str) -> None:
    r = kubectl(cluster, kube_home, version, "get", "nodes", "-o", "wide")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for node, ip in (("node-a", "10.244.0.2"), ("node-b", "10.244.0.3")):
        line = next(ln for ln in out.splitlines() if ln.startswith(node))
        assert "Ready" in line and ip in line


@pytest.mark.parametrize("version", VERSIONS)
def test_apply_get_wide_delete(cluster: ClusterHandle, kube_home: Path, version: str,
                               tmp_path: Path) -> None:
    name = f"applied-{_slug(version)}"
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "applied"}},
                "spec": {"containers": [{"name": "main", "image": "busybox",
                                         "command": ["sleep", "3600"]}]}}
    f = tmp_path / "pod.json"
    f.write_text(json.dumps(manifest))
    r = kubectl(cluster, kube_home, version, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert f"pod/{name} created" in r.stdout.decode()
    cluster.wait_pod_running(name)
    r = kubectl(cluster, kube_home, version, "get", "pods", "-o", "wide")
    line = next(ln for ln in r.stdout.decode().splitlines() if ln.startswith(name))
    assert "Running" in line and "1/1" in line
    assert cluster.pod_ip("default", name) in line
    # A second apply with a changed label goes through GET + strategic merge PATCH.
    manifest["metadata"]["labels"]["extra"] = "yes"
    f.write_text(json.dumps(manifest))
    r = kubectl(cluster, kube_home, version, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert f"pod/{name} configured" in r.stdout.decode()
    pod = cluster.get_pod(name)
    assert pod["metadata"]["labels"] == {"app": "applied", "extra": "yes"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in pod["metadata"]["annotations"]
    pids = [p.pid for p in cluster.processes("default", name)]
    assert pids
    r = kubectl(cluster, kube_home, version, "delete", "pod", name, "--grace-period=1")
    assert r.returncode == 0, r.stderr
    r = kubectl(cluster, kube_home, version, "get", "pod", name)
    assert r.returncode == 1 and b"NotFound" in r.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_create_and_watch_added_deleted(cluster: ClusterHandle, kube_home: Path, version: str,
                                        tmp_path: Path) -> None:
    name = f"watched-{_slug(version)}"
    w = kubectl_popen(cluster, kube_home, version, "get", "pods", "-w",
                      "--output-watch-events", "-l", f"watch={name}", stdout=-1, stderr=-1)
    try:
        time.sleep(1.0)
        manifest = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"watch": name}},
                    "spec": {"restartPolicy": "Never", "containers": [
                        {"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}}
        f = tmp_path / "pod.json"
        f.write_text(json.dumps(manifest))
        r = kubectl(cluster, kube_home, version, "create", "-f", str(f))
        assert r.returncode == 0, r.stderr
        cluster.wait_pod_running(name)
        r = kubectl(cluster, kube_home, version, "delete", "pod", name, "--wait=true")
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        w.terminate()
        out, err = w.communicate(timeout=10)
    events = [ln.split()[0] for ln in out.decode().splitlines() if name in ln]
    assert events and events[0] == "ADDED", out
    assert "DELETED" in events, out
    assert events.index("DELETED") > 0


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_100mb_byte_exact(cluster: ClusterHandle, kube_home: Path, version: str,
                               target: str, big_file: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = big_file
    out = tmp_path / "out.bin"
    t0 = time.monotonic()
    with open(out, "wb") as f:
        r = kubectl(cluster, kube_home, version, "exec", target, "-c", "main", "--",
                    "cat", str(path), stdout=f, stderr=-1, capture_output=False, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    got = hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.stat().st_size == BIG
    assert got == digest
    print(f"kubectl {version}: 100 MB exec in {elapsed:.2f}s = {BIG / elapsed / 1e6:.0f} MB/s")


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_exit_code_and_stdin(cluster: ClusterHandle, kube_home: Path, version: str,
                                  target: str) -> None:
    r = kubectl(cluster, kube_home, version, "exec", target, "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert b"command terminated with exit code 3" in r.stderr
    payload = random.Random(7).randbytes(3_000_000)
    r = kubectl(cluster, kube_home, version, "exec", "-i", target, "--", "sha256sum",
                input=payload)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    r = kubectl(cluster, kube_home, version, "exec", target, "-c", "nope", "--", "true")
    assert r.returncode == 1
    assert b"container nope is not valid for pod kt-target" in r.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_netadmin(cluster: ClusterHandle, kube_home: Path, version: str,
                        target: str) -> None:
    dbg = f"dbg-{_slug(version)}"
    r = kubectl(cluster, kube_home, version, "debug", target, "--image=busybox",
                "--profile=netadmin", "-c", dbg, "--", "sleep", "300")
    assert r.returncode == 0, r.stderr
    pod = cluster.wait_for(target, "default", lambda p: any(
        s["name"] == dbg and "running" in s["state"]
        for s in p["status"].get("ephemeralContainerStatuses", [])))
    spec = next(c for c in pod["spec"]["ephemeralContainers"] if c["name"] == dbg)
    assert set(spec["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert any(p.container == dbg and p.argv == ["sleep", "300"]
               for p in cluster.processes("default", target))
    r = kubectl(cluster, kube_home, version, "exec", target, "-c", dbg, "--",
                "grep", "CapEff", "/proc/self/status")
    eff = int(r.stdout.split()[1], 16)
    assert eff & (1 << 12) and eff & (1 << 13)  # CAP_NET_ADMIN, CAP_NET_RAW


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_rejected_by_pod_security_baseline(cluster: ClusterHandle, kube_home: Path,
                                                 version: str) -> None:
    name = f"psa-{_slug(version)}"
    cluster.create_pod(name, namespace="baseline")
    try:
        r = kubectl(cluster, kube_home, version, "-n", "baseline", "debug", name,
                    "--image=busybox", "--profile=netadmin", "-c", "dbg", "--", "sleep", "300")
        assert r.returncode == 1
        assert (f'Error from server (Forbidden): pods "{name}" is forbidden: violates '
                'PodSecurity "baseline:latest": non-default capabilities (container "dbg" must '
                'not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)'
                ) in r.stderr.decode()
        assert not cluster.get_pod(name, "baseline")["spec"].get("ephemeralContainers")
    finally:
        cluster.delete_pod(name, "baseline")


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_forbidden_for_limited_user(cluster: ClusterHandle, kube_home: Path,
                                          version: str, target: str) -> None:
    r = kubectl(cluster, kube_home, version, "--context", "zsniff-limited", "debug", target,
                "--image=busybox", "-c", "nope", "--", "sleep", "300")
    assert r.returncode == 1
    assert ('Error from server (Forbidden): pods "kt-target" is forbidden: User "limited" '
            'cannot patch resource "pods/ephemeralcontainers" in API group "" in the '
            'namespace "default"') in r.stderr.decode()
    # Everything else is allowed for that user.
    r = kubectl(cluster, kube_home, version, "--context", "zsniff-limited", "get", "pods")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_user(cluster: ClusterHandle, kube_home: Path, version: str,
                                 target: str) -> None:
    """kubeadm/kind/minikube style: the user is the certificate's CN, no token at all."""
    r = kubectl(cluster, kube_home, version, "--context", "zsniff-cert", "get", "pod", target)
    assert r.returncode == 0, r.stderr
    assert target in r.stdout.decode()
    r = kubectl(cluster, kube_home, version, "--context", "zsniff-cert", "exec", target, "--",
                "sh", "-c", "echo certified")
    assert (r.returncode, r.stdout) == (0, b"certified\n"), r.stderr
