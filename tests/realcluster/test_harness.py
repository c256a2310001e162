"""The real cluster itself: a short session of real kubectl against it, and its contract:
`up` twice is harmless, `down` removes everything even after a `kill -9`, and a second `down`
is harmless."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.handle import KUBECTL_DIR


def _kubectl(which: str) -> str:
    """The kubectl built with the cluster (v1.34.4), or Google's SDK's 1.33 (kubectl supports
    one minor version of skew with the server)."""
    if which == "built":
        from tests.realcluster.build import ensure_binaries

        return ensure_binaries()["kubectl"]
    path = KUBECTL_DIR / f"kubectl.{which}"
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return str(path)


@pytest.mark.parametrize("which", ["built", "1.33"])
def test_a_session_of_real_kubectl(cluster: Any, which: str, kube_home: Path) -> None:
    kubectl = _kubectl(which)
    env = dict(os.environ, HOME=str(kube_home), KUBECONFIG=str(cluster.kubeconfig))

    def k(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True,
                                timeout=120, **kw)
        assert not check or result.returncode == 0, result.stderr
        return result

    version = json.loads(k("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"
    nodes = json.loads(k("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["zsniff-node"]
    assert nodes[0]["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    name = f"kubectl-{Path(kubectl).name.replace('.', '-')}"
    cluster.create_pod(name)
    try:
        k("exec", name, "--", "sh", "-c", "head -c 10000000 /dev/urandom >/tmp/x")
        remote = k("exec", name, "--", "sha256sum", "/tmp/x").stdout.split()[0]
        raw = subprocess.run([kubectl, "exec", name, "--", "cat", "/tmp/x"], env=env,
                             capture_output=True, timeout=120).stdout
        assert len(raw) == 10_000_000 and hashlib.sha256(raw).hexdigest() == remote
        failed = k("exec", name, "--", "sh", "-c", "exit 3", check=False)
        assert failed.returncode == 3 and "exit code 3" in failed.stderr
        denied = k("--context", cluster.limited_context, "debug", name, "--image",
                   cluster.capture_image, "--", "sleep", "5", check=False)
        assert denied.returncode != 0
        assert 'cannot patch resource "pods/ephemeralcontainers"' in denied.stderr
    finally:
        cluster.delete_pod(name)
    psa = f"{name}-psa"
    cluster.create_pod(psa, "baseline")
    try:
        rejected = k("debug", psa, "-n", "baseline", "--image", cluster.capture_image,
                     "--profile=netadmin", "--", "sleep", "5", check=False)
        assert rejected.returncode != 0
        assert 'violates PodSecurity "baseline:latest"' in rejected.stderr, rejected.stderr
    finally:
        cluster.delete_pod(psa, "baseline")


def test_an_image_never_imported_fails_to_pull_for_real(cluster: Any) -> None:
    name = "never-imported"
    cluster.create_pod(name, image="zsniff.test/does-not-exist:1", wait=False)
    try:
        pod = cluster.wait_for(name, "default", lambda p: any(
            s.get("state", {}).get("waiting", {}).get("reason") in ("ErrImagePull",
                                                                     "ImagePullBackOff")
            for s in p["status"].get("containerStatuses", [])), timeout=90)
        waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
        assert "zsniff.test/does-not-exist:1" in waiting.get("message", "")
    finally:
        cluster.delete_pod(name)


def test_up_twice_down_after_kill_9_and_down_again(tmp_path: Path, cluster: Any) -> None:
    """A second cluster of its own (the session's keeps running): `up` twice returns the same
    cluster; after SIGKILL of every process of it, with a pod running, `down` leaves nothing:
    no process, cgroup, namespace, mount or file; a second `down` is harmless."""
    from tests.realcluster import cluster as real
    from tests.realcluster import node
    from tests.realcluster.handle import RealClusterHandle

    state = tmp_path / "second"
    kubeconfig = real.up(state)
    started = time.monotonic()
    assert real.up(state) == kubeconfig
    assert time.monotonic() - started < 10, "a second up should find the running cluster"
    handle = RealClusterHandle(state)
    handle.create_pod("survivor")
    pod_pid = handle.pod_pid("default", "survivor")
    pod_net = node.ns_inode(pod_pid, "net")
    everything = node.node_pids(handle.record, handle.prefix)
    assert pod_pid in everything and handle.record.holder_pid in everything
    for pid in everything:
        os.kill(pid, 9)
    assert real.down(state) == []
    assert not node.node_pids(handle.record, handle.prefix)
    assert not list(node._cgroup_dirs(handle.prefix))
    assert not state.exists()
    left = [p for p in os.listdir("/proc") if p.isdigit() and
            node.ns_inode(p, "net") in (pod_net, handle.record.net_inode)]
    assert not left, f"processes still in the node's or the pod's namespace: {left}"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state) not in mounts
    assert real.down(state) == []
