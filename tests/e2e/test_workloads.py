"""What users name: a Deployment, the Service in front of it, several at once with pods; each
pod one named interface of one pcapng.

Deployments need a controller that makes their pods: only the real Kubernetes has one (the
double serves pods and services, not apps/v1), so those tests are real_only; a Service's
selector works on both.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.formats.pcapng import Interface, PacketRecord, read_capture
from tests.e2e.conftest import (
    Zsniff,
    assert_no_capture_left,
    read_line,
    unique,
    wait_until,
)
from tests.e2e.test_outputs import ping

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
    pytest.mark.skipif(shutil.which("ping") is None, reason="ping not installed"),
]

NS = "default"
PINGS = 4  # ping -c 4: 4 requests and 4 replies per pod


def running_pods(cluster: Any, selector: str, namespace: str = NS) -> list[dict[str, Any]]:
    listed = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                             + selector)
    return [p for p in listed["items"]
            if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("podIP")]


def pod_ips(cluster: Any, selector: str, count: int) -> dict[str, str]:
    """name -> IPv4 of the running pods the selector matches, once there are `count`."""
    pods = wait_until(lambda: (p := running_pods(cluster, selector)) and len(p) == count and p,
                      cluster.pod_timeout, f"{count} running pods of {selector}", 0.2)
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}


def create_service(cluster: Any, name: str, selector: dict[str, str]) -> None:
    cluster.request("POST", f"/api/v1/namespaces/{NS}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"port": 8080}]}})


def create_deployment(cluster: Any, name: str, replicas: int, labels: dict[str, str]) -> None:
    from tests.realcluster.images import TOOLS

    cluster.request("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # sleep as PID 1 ignores SIGTERM: a deleted replica should not take 30 s.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": TOOLS,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["sleep", "3600"]}],
                },
            },
        },
    })


def start_capture(zsniff: Zsniff, args: list[str], out: Path) -> subprocess.Popen[str]:
    return zsniff.start([*args, "-w", str(out), "icmp"], stderr=subprocess.PIPE, text=True)


def wait_listening(proc: subprocess.Popen[str], pods: int, seen: list[str]) -> None:
    """Read stderr until tcpdump listens in `pods` pods; every line read goes into `seen`."""
    assert proc.stderr is not None
    listening = 0
    deadline = time.monotonic() + 120
    while listening < pods:
        assert time.monotonic() < deadline, "tcpdump did not listen in time:\n" + "".join(seen)
        line = read_line(proc.stderr, 5)
        if not line and proc.poll() is not None:
            raise AssertionError("zsniff ended early:\n" + "".join(seen) + proc.stderr.read())
        seen.append(line)
        listening += "listening on" in line


def stop(proc: subprocess.Popen[str], seen: list[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "tcpdump stopped in the pods (verified)" in err, err
    return err


def packets_per_interface(path: Path) -> dict[str, int]:
    events = list(read_capture(str(path)))
    interfaces = {e.id: e.name or "" for e in events if isinstance(e, Interface)}
    counts = dict.fromkeys(interfaces.values(), 0)
    for event in events:
        if isinstance(event, PacketRecord):
            counts[interfaces[event.interface_id]] += 1
    return counts


def assert_named_rows(path: Path, client: str) -> None:
    """tshark with names on: each interface carries its pod's pings with the client, by name."""
    rows = subprocess.run(
        ["tshark", "-r", str(path), "-N", "n", "-T", "fields", "-e", "frame.interface_name",
         "-e", "ip.src_host", "-e", "ip.dst_host"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert rows
    for row in rows:
        interface, src, dst = row.split("\t")
        assert {src, dst} == {interface, f"{NS}/{client}"}, row


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[str]:
    name = unique("wl-client")
    cluster.create_pod(name, command=["sleep", "3600"])
    yield name
    cluster.delete_pod(name)


def test_a_service_captures_the_pods_behind_its_selector(
    cluster: Any, zsniff: Zsniff, client: str, tmp_path: Path
) -> None:
    app = unique("svc-app")
    pods = [unique("svc-pod") for _ in range(2)]
    for name in pods:
        cluster.create_pod(name, command=["sleep", "3600"], labels={"app": app})
    other = unique("svc-other")  # same app label key, other value: not behind the service
    cluster.create_pod(other, command=["sleep", "3600"], labels={"app": app + "-x"})
    service = unique("svc")
    create_service(cluster, service, {"app": app})
    try:
        ips = {name: cluster.pod_ip(NS, name) for name in pods}
        out = tmp_path / "svc.pcapng"
        seen: list[str] = []
        proc = start_capture(zsniff, [f"svc/{service}"], out)
        wait_listening(proc, 2, seen)
        for ip in ips.values():
            ping(cluster, client, ip)
        ping(cluster, client, cluster.pod_ip(NS, other))
        time.sleep(0.5)
        stop(proc, seen)
        assert packets_per_interface(out) == {f"{NS}/{name}": 2 * PINGS for name in pods}
        assert_named_rows(out, client)
        for name in pods:
            assert_no_capture_left(cluster, NS, name)
    finally:
        cluster.request("DELETE", f"/api/v1/namespaces/{NS}/services/{service}")
        for name in [*pods, other]:
            cluster.delete_pod(name)


@pytest.fixture(scope="module")
def deployment(cluster: Any) -> Iterator[tuple[str, str]]:
    """A Deployment of 3 replicas behind a Service: (deployment name, service name)."""
    if cluster.kind != "real":
        pytest.skip("Deployments need a controller: the real cluster only")
    name = unique("wl-deploy")
    create_deployment(cluster, name, 3, {"app": name})
    create_service(cluster, name + "-svc", {"app": name})
    yield name, name + "-svc"
    cluster.request("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{name}"
                    "?propagationPolicy=Foreground")
    cluster.request("DELETE", f"/api/v1/namespaces/{NS}/services/{name}-svc")
    wait_until(lambda: not cluster.request(
        "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=app={name}")["items"],
        cluster.pod_timeout, "the deployment's pods to go")


@pytest.mark.real_only
@pytest.mark.parametrize("form", ["svc/{svc}", "deploy/{deploy}", "deployments.apps/{deploy}",
                                  "service/{ns}/{svc}"])
def test_a_deployment_of_three_replicas_is_captured_into_one_pcapng(
    form: str, cluster: Any, deployment: tuple[str, str], client: str, zsniff: Zsniff,
    tmp_path: Path,
) -> None:
    deploy, svc = deployment
    ips = pod_ips(cluster, f"app={deploy}", 3)
    out = tmp_path / "deploy.pcapng"
    seen: list[str] = []
    proc = start_capture(zsniff, [form.format(svc=svc, deploy=deploy, ns=NS)], out)
    wait_listening(proc, 3, seen)
    for ip in ips.values():
        ping(cluster, client, ip)
    time.sleep(0.5)
    stop(proc, seen)
    assert packets_per_interface(out) == {f"{NS}/{name}": 2 * PINGS for name in ips}
    assert_named_rows(out, client)
    info = subprocess.run(["capinfos", "-I", str(out)], capture_output=True, text=True,
                          check=True).stdout
    assert "Number of interfaces in file: 3" in info, info
    for name in ips:
        assert_no_capture_left(cluster, NS, name)


@pytest.mark.real_only
def test_workloads_mix_with_pods_and_are_counted_against_max_pods(
    cluster: Any, deployment: tuple[str, str], client: str, zsniff: Zsniff, tmp_path: Path,
) -> None:
    deploy, svc = deployment
    pod_ips(cluster, f"app={deploy}", 3)
    # The service and the deployment name the same 3 pods; the client is a 4th.
    refused = zsniff.run([f"deploy/{deploy}", f"svc/{svc}", f"pod/{client}", "--max-pods", "3",
                          "-w", str(tmp_path / "x.pcapng")])
    assert refused.returncode == 2, refused.stderr
    assert "4 pods to capture" in refused.stderr and "--max-pods" in refused.stderr
    assert not (tmp_path / "x.pcapng").exists()


def wait_for_line(proc: subprocess.Popen[str], seen: list[str], words: str,
                  timeout: float = 120) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = read_line(proc.stderr, 5)
        seen.append(line)
        if words in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line with {words!r}:\n" + "".join(seen))


@pytest.mark.real_only
def test_the_capture_follows_a_scale_up_and_a_deleted_replica(
    cluster: Any, client: str, zsniff: Zsniff, tmp_path: Path,
) -> None:
    """3 -> 4 replicas mid-capture: the 4th pod's interface and packets join; a deleted
    replica ends its lane with a note, the capture goes on, and the controller's replacement
    joins too."""
    if cluster.kind != "real":
        pytest.skip("Deployments need a controller")
    deploy = unique("wl-follow")
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/{deploy}"
    create_deployment(cluster, deploy, 3, {"app": deploy})
    try:
        first = pod_ips(cluster, f"app={deploy}", 3)
        out = tmp_path / "follow.pcapng"
        seen: list[str] = []
        proc = start_capture(zsniff, [f"deploy/{deploy}"], out)
        try:
            wait_listening(proc, 3, seen)
            cluster.request("PATCH", path, {"spec": {"replicas": 4}},
                            content_type="application/merge-patch+json")
            fourth_ips = {n: ip for n, ip in pod_ips(cluster, f"app={deploy}", 4).items()
                          if n not in first}
            (fourth, fourth_ip), = fourth_ips.items()
            wait_for_line(proc, seen, f"{NS}/{fourth} joins the capture (deployment/{deploy})")
            wait_listening(proc, 1, seen)
            for ip in [*first.values(), fourth_ip]:
                ping(cluster, client, ip)
            gone = sorted(first)[0]
            cluster.delete_pod(gone, grace=1)
            wait_for_line(proc, seen, f"{NS}/{gone}: went away; its lane ends here")
            replacement_ips = {n: ip for n, ip in pod_ips(cluster, f"app={deploy}", 4).items()
                               if n not in first and n != fourth}
            (replacement, replacement_ip), = replacement_ips.items()
            wait_for_line(proc, seen, f"{NS}/{replacement} joins the capture")
            wait_listening(proc, 1, seen)
            # The capture goes on: the pods left and the newcomer get more traffic.
            ping(cluster, client, fourth_ip)
            ping(cluster, client, replacement_ip)
            time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        err = "".join(seen) + err
        assert proc.returncode == 130, err
        assert "error:" not in err, err
        expected = {f"{NS}/{name}": 2 * PINGS for name in first}
        expected[f"{NS}/{fourth}"] = 4 * PINGS
        expected[f"{NS}/{replacement}"] = 2 * PINGS
        assert packets_per_interface(out) == expected
        assert_named_rows(out, client)
        assert f"{NS}/{gone}: went away" in err
        for name in [*first, fourth, replacement]:
            if name != gone:
                assert_no_capture_left(cluster, NS, name)
    finally:
        cluster.request("DELETE", path + "?propagationPolicy=Foreground")
        wait_until(lambda: not cluster.request(
            "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=app={deploy}")["items"],
            cluster.pod_timeout, "the deployment's pods to go")


@pytest.mark.real_only
def test_max_pods_still_bounds_a_followed_capture(
    cluster: Any, client: str, zsniff: Zsniff, tmp_path: Path,
) -> None:
    if cluster.kind != "real":
        pytest.skip("Deployments need a controller")
    deploy = unique("wl-bound")
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/{deploy}"
    create_deployment(cluster, deploy, 2, {"app": deploy})
    try:
        first = pod_ips(cluster, f"app={deploy}", 2)
        out = tmp_path / "bound.pcapng"
        seen: list[str] = []
        proc = start_capture(zsniff, [f"deploy/{deploy}", "--max-pods", "2"], out)
        try:
            wait_listening(proc, 2, seen)
            cluster.request("PATCH", path, {"spec": {"replicas": 3}},
                            content_type="application/merge-patch+json")
            third = next(n for n in pod_ips(cluster, f"app={deploy}", 3) if n not in first)
            wait_for_line(proc, seen, f"{NS}/{third} (deployment/{deploy}) is not captured: "
                          "--max-pods 2 pods are captured already")
            for ip in first.values():
                ping(cluster, client, ip)
            time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 130, "".join(seen) + err
        assert packets_per_interface(out) == {f"{NS}/{name}": 2 * PINGS for name in first}
        assert not cluster.get_pod(third).get("spec", {}).get("ephemeralContainers")
    finally:
        cluster.request("DELETE", path + "?propagationPolicy=Foreground")
        wait_until(lambda: not cluster.request(
            "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=app={deploy}")["items"],
            cluster.pod_timeout, "the deployment's pods to go")


@pytest.mark.real_only
def test_a_workload_the_user_may_not_read_is_refused_with_the_permission_named(
    cluster: Any, deployment: tuple[str, str], zsniff: Zsniff, tmp_path: Path,
) -> None:
    """The limited user may read pods but not deployments: one line, the verb and resource
    to ask for, exit 5, nothing changed."""
    deploy, _ = deployment
    pod_ips(cluster, f"app={deploy}", 3)
    # Earlier captures of the module's deployment left capture containers: none may be added.
    before = {p["metadata"]["name"]: p["spec"].get("ephemeralContainers")
              for p in running_pods(cluster, f"app={deploy}")}
    out = tmp_path / "x.pcapng"
    result = zsniff.run([f"deploy/{deploy}", "--context", cluster.limited_context,
                         "-w", str(out)])
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "forbidden" in result.stderr.lower()
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "get` on deployments.apps" in hint and "kubectl auth can-i get deployments.apps" in hint
    assert not out.exists()
    after = {p["metadata"]["name"]: p["spec"].get("ephemeralContainers")
             for p in running_pods(cluster, f"app={deploy}")}
    assert after == before
