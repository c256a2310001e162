"""--via-node: pods whose own containers may not capture (PodSecurity `restricted`) captured
from a hostPID capture pod on their node, inside their network namespace, the pods unchanged.

real_only: the double's pods are network namespaces with no node, cgroups or PodSecurity
admission; only a real kubelet runs a hostPID pod beside the target's processes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PodPair, Zsniff, stop_process, unique, wait_capture_live
from tests.e2e.test_failures import RESTRICTED_OK
from tests.e2e.test_node import (
    READ_NODES,
    capture_pods,
    limited_user_may,
    once_rbac_caught_up,
)
from tests.e2e.test_workloads import start_capture, wait_listening

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
    pytest.mark.real_only,
]

LOCKED = "restricted"  # the tests' real cluster enforces PodSecurity restricted here


def pod(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return found


def ping(cluster: Any, source: str, target_ip: str, count: int = 4) -> None:
    cluster.run_in_pod("default", source, ["ping", "-c", str(count), "-i", "0.2", target_ip],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=30)


def icmp_rows(path: Path) -> list[tuple[str, ...]]:
    rows = subprocess.run(
        ["tshark", "-r", str(path), "-N", "n", "-Y", "icmp", "-T", "fields",
         "-e", "frame.interface_name", "-e", "ip.src_host", "-e", "ip.dst_host",
         "-e", "icmp.type"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [tuple(r.split("\t")) for r in rows]


def test_a_restricted_pod_is_captured_by_name_unchanged_and_the_capture_pod_goes(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    locked, client = unique("locked"), unique("client")
    cluster.create_pod(locked, LOCKED, command=["sleep", "3600"],
                       security_context=RESTRICTED_OK)
    cluster.create_pod(client, command=["sleep", "3600"])
    try:
        before = pod(cluster, LOCKED, locked)
        plain = zsniff.run([locked, "-n", LOCKED, "-w", str(tmp_path / "plain.pcapng")])
        assert plain.returncode == 6, plain.stderr
        hint = next(line for line in plain.stderr.splitlines() if line.startswith("hint: "))
        assert "--via-node --capture-namespace" in hint, plain.stderr  # the way out, named

        out = tmp_path / "via.pcapng"
        proc = start_capture(zsniff, [locked, "-n", LOCKED, "--via-node",
                                      "--capture-namespace", "default"], out)
        seen: list[str] = []
        wait_listening(proc, 1, seen)
        assert len(capture_pods(cluster, "default")) == 1, "".join(seen)
        ping(cluster, client, before["status"]["podIP"])
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=90)
        err = "".join(seen) + rest
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "(hostPID)" in err
        assert "tcpdump stopped in the pod (verified)" in err and "(verified gone)" in err
        assert capture_pods(cluster, "default") == [], err

        fields = icmp_rows(out)
        assert {f[0] for f in fields} == {f"{LOCKED}/{locked}"}, fields  # the pod's own lane
        requests = [f for f in fields if f[1:] == (f"default/{client}", f"{LOCKED}/{locked}",
                                                   "8")]
        replies = [f for f in fields if f[1:] == (f"{LOCKED}/{locked}", f"default/{client}",
                                                  "0")]
        # Inside the pod's own network namespace: each packet once, as on its eth0.
        assert len(requests) == 4 and len(replies) == 4, fields

        after = pod(cluster, LOCKED, locked)
        assert after["spec"] == before["spec"]  # no ephemeral container, nothing added
        assert "ephemeralContainerStatuses" not in after["status"]
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
    finally:
        cluster.delete_pod(locked, LOCKED)
        cluster.delete_pod(client)


def test_two_restricted_pods_on_one_node_share_one_capture_pod_one_lane_each(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    app = unique("locked-app")
    names = [unique("locked"), unique("locked")]
    client = unique("client")
    for name in names:
        cluster.create_pod(name, LOCKED, command=["sleep", "3600"], labels={"app": app},
                           security_context=RESTRICTED_OK)
    cluster.create_pod(client, command=["sleep", "3600"])
    try:
        out = tmp_path / "two.pcapng"
        proc = start_capture(zsniff, ["-l", f"app={app}", "-n", LOCKED, "--via-node",
                                      "--capture-namespace", "default"], out)
        seen: list[str] = []
        wait_listening(proc, 2, seen)
        made = [line for line in seen if "made capture pod" in line]
        assert len(made) == 1, "".join(seen)  # one per node, not one per pod
        for name in names:
            ping(cluster, client, pod(cluster, LOCKED, name)["status"]["podIP"], count=2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=90)
        err = "".join(seen) + rest
        assert proc.returncode == 130, err
        assert capture_pods(cluster, "default") == [], err
        fields = icmp_rows(out)
        for name in names:
            lane = [f for f in fields if f[0] == f"{LOCKED}/{name}"]
            assert (f"{LOCKED}/{name}", f"default/{client}", f"{LOCKED}/{name}", "8") in lane
            # Each lane holds its own pod's packets only.
            assert all(f"{LOCKED}/{name}" in f[1:3] for f in lane), lane
    finally:
        for name in names:
            cluster.delete_pod(name, LOCKED)
        cluster.delete_pod(client)


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_a_capture_namespace_below_privileged_is_refused_before_any_pod(
        cluster: Any, zsniff: Zsniff, tmp_path: Path, level: str) -> None:
    locked = unique("locked")
    cluster.create_pod(locked, LOCKED, command=["sleep", "3600"],
                       security_context=RESTRICTED_OK)
    try:
        out = tmp_path / "x.pcapng"
        result = zsniff.run([locked, "-n", LOCKED, "--via-node", "--capture-namespace", level,
                             "-w", str(out)])
        assert result.returncode == 6, result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
        assert f'namespace "{level}" enforces PodSecurity "{level}"' in result.stderr
        assert "hostPID with SYS_ADMIN, SYS_PTRACE" in result.stderr
        assert "--capture-namespace" in result.stderr and "=privileged" in result.stderr
        assert capture_pods(cluster, level) == []
        assert not out.exists()
    finally:
        cluster.delete_pod(locked, LOCKED)


def test_a_user_who_may_not_create_capture_pods_is_told_what_to_ask_for(
        cluster: Any, zsniff: Zsniff, tmp_path: Path) -> None:
    """The limited user may read the target (and nodes), not make pods in default: refused
    (exit 5) with the verbs, and neither pod is touched."""
    locked = unique("locked")
    cluster.create_pod(locked, LOCKED, command=["sleep", "3600"],
                       security_context=RESTRICTED_OK)
    read_pods = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    try:
        with limited_user_may(cluster, READ_NODES + read_pods):
            result = once_rbac_caught_up(
                zsniff, [locked, "-n", LOCKED, "--via-node", "--capture-namespace", "default",
                         "--context", cluster.limited_context, "-w", str(tmp_path / "x.pcapng")],
                lambda stderr: "forbidden to create pods" in stderr)
        assert result.returncode == 5, result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
        assert "forbidden to create pods" in result.stderr
        assert 'in namespace "default"' in result.stderr and "no pod was made" in result.stderr
        hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
        assert "kubectl auth can-i create pods -n default" in hint
        assert capture_pods(cluster, "default") == []
    finally:
        cluster.delete_pod(locked, LOCKED)


def test_a_kubelet_restart_mid_capture_is_survived_through_the_capture_pod(
        cluster: Any, zsniff: Zsniff, pair: PodPair, tmp_path: Path) -> None:
    """Reconnect works the same from a node's capture pod: the kubelet restarted, zsniff
    starts tcpdump again in the capture pod (inside the pod's network namespace), one tcpdump
    runs there afterwards, and the gap is in the file."""
    out = tmp_path / "restart.pcapng"
    traffic = pair.traffic(icmp=1, seconds=120, pause=0.1, families=(4,))
    proc = start_capture(zsniff, [pair.web, "-n", pair.namespace, "--via-node",
                                  "--capture-namespace", "default"], out)
    try:
        seen: list[str] = []
        wait_listening(proc, 1, seen)
        assert len(capture_pods(cluster, "default")) == 1, "".join(seen)
        # tcpdump runs in the capture pod's cgroup but in the web pod's network namespace,
        # which is where the cluster lists it.
        before = wait_capture_live(cluster, pair.namespace, pair.web, proc=proc)
        time.sleep(1.5)
        cluster.restart("kubelet", down_for=1.0)
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        while not any("reconnected: capturing again" in s for s in seen):
            assert time.monotonic() < deadline, "".join(seen)
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
        after = wait_capture_live(cluster, pair.namespace, pair.web, proc=proc)
        time.sleep(2.0)  # packets after the gap
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=90)
        err = "".join(seen) + rest
    finally:
        stop_process(proc)
        stop_process(traffic)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "reconnected: capturing again" in err, err
    assert len(after) == 1 and after != before, (before, after)
    comments = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment"],
                              capture_output=True, text=True, check=True).stdout
    assert comments.count("capture gap") == 1, comments
    assert capture_pods(cluster, "default") == [], err
