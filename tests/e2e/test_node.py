"""`node/NAME`: everything the node sends and receives, through a hostNetwork pod zsniff makes
on it and removes afterwards.

real_only: the double's pods are network namespaces without a node network to share (it has
no hostNetwork pods), and only a real kubelet pins a pod with nodeName and enforces taints.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.kube.nodecapture import NODE_LABEL
from tests.e2e.conftest import Zsniff, unique, wait_until
from tests.e2e.test_workloads import start_capture, wait_listening

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
    pytest.mark.real_only,
]

NS = "default"


def capture_pods(cluster: Any, namespace: str) -> list[str]:
    listed = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                             + NODE_LABEL)
    return [p["metadata"]["name"] for p in listed["items"]]


def pod_ip(cluster: Any, name: str) -> str:
    return str(cluster.request("GET", f"/api/v1/namespaces/{NS}/pods/{name}")["status"]["podIP"])


def test_a_node_capture_holds_two_pods_traffic_by_name_and_its_pod_is_gone_after_ctrl_c(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    node = cluster.node_names[0]
    a, b = unique("node-a"), unique("node-b")
    cluster.create_pod(a, command=["sleep", "3600"], node=node)
    cluster.create_pod(b, command=["sleep", "3600"], node=node)
    try:
        out = tmp_path / "node.pcapng"
        proc = start_capture(zsniff, [f"node/{node}"], out)
        seen: list[str] = []
        wait_listening(proc, 1, seen)
        assert len(capture_pods(cluster, NS)) == 1, "".join(seen)
        # Neither pod is captured by zsniff: only the node's network sees their packets.
        cluster.run_in_pod(NS, a, ["ping", "-c", "4", "-i", "0.2", pod_ip(cluster, b)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=30)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=90)
        err = "".join(seen) + rest
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert f"from node/{node} " in err and "tcpdump stopped in the pod (verified)" in err
        assert "(verified gone)" in err, err
        # Deleted and gone from the API, not only asked to go.
        assert capture_pods(cluster, NS) == [], err
        rows = subprocess.run(
            ["tshark", "-r", str(out), "-N", "n", "-T", "fields", "-e", "frame.interface_name",
             "-e", "ip.src_host", "-e", "ip.dst_host", "-e", "icmp.type"],
            capture_output=True, text=True, check=True).stdout.splitlines()
        fields = [tuple(r.split("\t")) for r in rows]
        assert fields, err
        assert {f[0] for f in fields} == {f"node/{node}"}
        requests = [f for f in fields if f[1:] == (f"{NS}/{a}", f"{NS}/{b}", "8")]
        replies = [f for f in fields if f[1:] == (f"{NS}/{b}", f"{NS}/{a}", "0")]
        # -i any sees each packet on every interface it crosses on the node: at least once.
        assert len(requests) >= 4 and len(replies) >= 4, rows
    finally:
        cluster.delete_pod(a)
        cluster.delete_pod(b)


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_baseline_or_restricted_capture_namespace_is_refused_before_any_pod(
        cluster: Any, zsniff: Zsniff, tmp_path: Path, level: str) -> None:
    out = tmp_path / "x.pcapng"
    result = zsniff.run([f"node/{cluster.node_names[0]}", "--capture-namespace", level,
                         "-w", str(out)])
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert f'namespace "{level}" enforces PodSecurity "{level}"' in result.stderr
    assert "hostNetwork" in result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "--capture-namespace" in hint and "=privileged" in hint
    assert capture_pods(cluster, level) == []
    assert not out.exists()


def test_a_user_who_may_not_read_nodes_is_told_what_to_ask_for(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    node = cluster.node_names[0]
    result = zsniff.run([f"node/{node}", "--context", cluster.limited_context,
                         "-w", str(tmp_path / "x.pcapng")])
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "`get` on nodes" in hint and f"kubectl auth can-i get nodes/{node}" in hint
    assert capture_pods(cluster, NS) == []


def test_an_unknown_node_is_not_found(cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    result = zsniff.run(["node/no-such-node", "-w", str(tmp_path / "x.pcapng")])
    assert result.returncode == 3, result.stderr
    assert 'node "no-such-node" not found' in result.stderr
    assert "kubectl get nodes" in result.stderr
    wait_until(lambda: capture_pods(cluster, NS) == [], 5, "no capture pod")


def test_a_capture_pod_that_cannot_start_is_deleted_and_the_pull_named(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    """A failure after the pod was made (its image cannot be pulled) still removes it."""
    result = zsniff.run([f"node/{cluster.node_names[0]}", "--image",
                         "registry.example/does-not-exist:1", "-w", str(tmp_path / "x.pcapng")],
                        timeout=180)
    assert result.returncode == 8, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "cannot pull the capture image" in result.stderr
    assert "(verified gone)" in result.stderr
    assert capture_pods(cluster, NS) == []


def test_ctrl_c_while_the_capture_pod_starts_removes_it(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    # An image that cannot be pulled keeps the pod starting for as long as the test needs.
    proc = zsniff.start([f"node/{cluster.node_names[0]}", "--image",
                         "registry.example/does-not-exist:1", "-w", str(tmp_path / "x.pcapng")],
                        text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "made capture pod" in first, first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=90)
    err = first + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "(verified gone)" in err, err
    assert capture_pods(cluster, NS) == []


@contextlib.contextmanager
def limited_user_may(cluster: Any, rules: list[dict[str, Any]],
                     namespace: str | None = None) -> Iterator[None]:
    """The limited user is given `rules` (cluster-wide, or in `namespace`) for one test."""
    from tests.realcluster.cluster import LIMITED_USER

    rbac = "/apis/rbac.authorization.k8s.io/v1"
    where = f"{rbac}/namespaces/{namespace}" if namespace else rbac
    kind = "Role" if namespace else "ClusterRole"
    role = unique("zsniff-test-node")
    cluster.request("POST", f"{where}/{kind.lower()}s", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": {"name": role}, "rules": rules})
    cluster.request("POST", f"{where}/{kind.lower()}bindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": f"{kind}Binding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": LIMITED_USER}]})
    try:
        yield
    finally:
        cluster.request("DELETE", f"{where}/{kind.lower()}bindings/{role}")
        cluster.request("DELETE", f"{where}/{kind.lower()}s/{role}")


READ_NODES = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


def once_rbac_caught_up(zsniff: Zsniff, args: list[str],
                        settled: Callable[[str], bool]) -> subprocess.CompletedProcess[str]:
    """Run zsniff until its stderr shows the new RBAC bindings took effect (the authorizer's
    cache takes a moment to see one), for at most 15 s: the last run."""
    deadline = time.monotonic() + 15
    while True:
        result = zsniff.run(args)
        if settled(result.stderr) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def limited_node_capture(cluster: Any, zsniff: Zsniff, tmp_path: Path, *extra: str,
                         until_not: str) -> subprocess.CompletedProcess[str]:
    """A node capture as the limited user, once its stderr no longer says `until_not`."""
    return once_rbac_caught_up(
        zsniff, [f"node/{cluster.node_names[0]}", "--context", cluster.limited_context,
                 "-w", str(tmp_path / "x.pcapng"), *extra],
        lambda stderr: until_not not in stderr)


def test_a_user_who_may_not_create_pods_is_told_what_to_ask_for(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    """Allowed to read nodes, not to create pods: refused (exit 5) with the verbs node capture
    needs, and nothing is made."""
    with limited_user_may(cluster, READ_NODES):
        result = limited_node_capture(cluster, zsniff, tmp_path, until_not="get` on nodes")
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "forbidden to create pods" in result.stderr
    assert 'in namespace "default"' in result.stderr and "no pod was made" in result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "kubectl auth can-i create pods -n default" in hint and "delete" in hint
    assert capture_pods(cluster, NS) == []


def test_a_user_who_may_make_but_not_delete_capture_pods_is_refused_before_any_pod(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    """A pod zsniff could make but not remove would be left behind: the rights are reviewed
    (SelfSubjectAccessReview) before it is made, and the missing one named."""
    pods = [{"apiGroups": [""], "resources": ["pods"],
             "verbs": ["create", "get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]
    with limited_user_may(cluster, READ_NODES), \
            limited_user_may(cluster, pods, namespace="default"):
        # Until RBAC's cache sees both bindings: only the deletion is refused then.
        result = once_rbac_caught_up(
            zsniff, [f"node/{cluster.node_names[0]}", "--context", cluster.limited_context,
                     "-w", str(tmp_path / "x.pcapng")],
            lambda stderr: "forbidden to delete pods in" in stderr)
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert 'forbidden to delete pods in namespace "default"' in result.stderr
    assert "no pod was made" in result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "kubectl auth can-i delete pods -n default" in hint
    assert capture_pods(cluster, NS) == []


def test_podsecurity_refuses_the_pod_at_creation_when_the_level_is_not_readable(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    """The limited user may make pods in "baseline" but not read the namespace's label: the
    API's PodSecurity refusal is what tells (exit 6), said as the capture pod's."""
    pods = [{"apiGroups": [""], "resources": ["pods"],
             "verbs": ["create", "get", "list", "watch", "delete"]}]
    with limited_user_may(cluster, READ_NODES), \
            limited_user_may(cluster, pods, namespace="baseline"):
        result = limited_node_capture(cluster, zsniff, tmp_path, "--capture-namespace",
                                      "baseline", until_not="forbidden")
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert 'PodSecurity in namespace "baseline" refused the node capture pod' in result.stderr
    assert "hostNetwork=true" in result.stderr  # the API's words: which rule was broken
    assert "--capture-namespace" in result.stderr
    assert capture_pods(cluster, "baseline") == []
