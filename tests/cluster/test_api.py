"""The cluster's API semantics, checked through the handle and a raw websocket client."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import websockets

from .handle import ApiFailure, ClusterHandle

pytestmark = pytest.mark.root


@pytest.fixture
def c(cluster: ClusterHandle) -> ClusterHandle:
    cluster.reset()
    yield cluster
    cluster.reset()


def _exec_url(c: ClusterHandle, pod: str, argv: list[str], container: str = "main",
              stdin: bool = False, ns: str = "default") -> str:
    q = [("command", a) for a in argv] + [("container", container), ("stdout", "true"),
                                          ("stderr", "true"), ("stdin", str(stdin).lower())]
    base = c.base_url.replace("https://", "wss://").replace("http://", "ws://")
    return f"{base}/api/v1/namespaces/{ns}/pods/{pod}/exec?{urllib.parse.urlencode(q)}"


async def _exec(c: ClusterHandle, pod: str, argv: list[str], *, stdin: bytes | None = None,
                protocols: tuple[str, ...] = ("v5.channel.k8s.io", "v4.channel.k8s.io"),
                container: str = "main") -> tuple[str | None, bytes, bytes, Any]:
    sslctx = ssl.create_default_context(cafile=str(c.ca_file)) if c.ca_file else None
    out, err, status = bytearray(), bytearray(), None
    async with websockets.connect(
            _exec_url(c, pod, argv, container, stdin is not None), ssl=sslctx,
            subprotocols=list(protocols), compression=None, max_size=None,
            additional_headers={"Authorization": f"Bearer {c._tokens['admin']}"}) as ws:
        if stdin is not None:
            await ws.send(b"\x00" + stdin)
            await ws.send(b"\xff\x00")
        try:
            async for msg in ws:
                assert isinstance(msg, bytes)
                if msg[0] == 1:
                    out += msg[1:]
                elif msg[0] == 2:
                    err += msg[1:]
                elif msg[0] == 3:
                    status = json.loads(msg[1:])
        except websockets.ConnectionClosedError:
            pass
        proto = ws.subprotocol
    return proto, bytes(out), bytes(err), status


@pytest.fixture(scope="module")
def box(cluster: ClusterHandle) -> str:
    cluster.create_pod("api-box")
    yield "api-box"
    cluster.delete_pod("api-box")


def test_exec_websocket_v5_v4_status_and_stdin(c: ClusterHandle, box: str) -> None:
    proto, out, err, st = asyncio.run(_exec(c, box, ["sh", "-c", "echo out; echo err >&2"]))
    assert proto == "v5.channel.k8s.io" and out == b"out\n" and err == b"err\n"
    assert st == {"metadata": {}, "status": "Success"}
    proto, out, _, st = asyncio.run(_exec(c, box, ["sh", "-c", "exit 3"],
                                          protocols=("v4.channel.k8s.io",)))
    assert proto == "v4.channel.k8s.io"
    assert st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert st["message"] == ("command terminated with non-zero exit code: error executing "
                             "command [sh -c exit 3], exit code 3")
    data = bytes(range(256)) * 4000
    _, out, _, st = asyncio.run(_exec(c, box, ["cat"], stdin=data))
    assert out == data and st["status"] == "Success"


def test_exec_drop_fault_leaves_process_running(c: ClusterHandle, box: str) -> None:
    c.set_faults(exec_drop_after_bytes=100_000)
    argv = ["sh", "-c", "yes zsniff-drop | head -c 50000000; sleep 30"]
    _, out, _, st = asyncio.run(_exec(c, box, argv))
    assert st is None and len(out) == 100_000  # abrupt close: no status frame
    time.sleep(0.3)
    procs = [p for p in c.processes("default", box) if p.container == "main"]
    # The producer got EPIPE once the server closed its pipe; the shell lives on (sleep).
    assert any(p.argv[:2] == ["sleep", "30"] for p in procs), procs
    # The next exec is not dropped.
    _, out, _, st = asyncio.run(_exec(c, box, ["echo", "ok"]))
    assert out == b"ok\n" and st["status"] == "Success"


def test_api_fault_codes(c: ClusterHandle, box: str) -> None:
    c.set_faults(api_fail_code=429, api_fail_count=1, api_fail_retry_after=2)
    with pytest.raises(ApiFailure) as e:
        c.get_pod(box)
    assert e.value.status == 429 and e.value.body["reason"] == "TooManyRequests"
    assert c.get_pod(box)["metadata"]["name"] == box
    c.set_faults(api_fail_code=503, api_fail_count=2, api_fail_match="/pods/")
    for _ in range(2):
        with pytest.raises(ApiFailure) as e:
            c.get_pod(box)
        assert e.value.status == 503
    c.get_pod(box)
    c.set_faults(api_delay=0.5, api_delay_count=1)
    t0 = time.monotonic()
    c.get_pod(box)
    assert time.monotonic() - t0 >= 0.5


def _patch_ephemeral(c: ClusterHandle, pod: str, containers: list[dict[str, Any]],
                     ctype: str = "application/strategic-merge-patch+json",
                     ns: str = "default") -> Any:
    return c.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{pod}/ephemeralcontainers",
                     {"spec": {"ephemeralContainers": containers}}, content_type=ctype)


def test_ephemeral_lifecycle_and_validation(c: ClusterHandle) -> None:
    c.create_pod("eph")
    try:
        c.set_pull_delay(1.0)
        _patch_ephemeral(c, "eph", [{"name": "e1", "image": "busybox",
                                     "command": ["sh", "-c", "sleep 0.5; exit 2"]}])
        p = c.get_pod("eph")
        st = p["status"]["ephemeralContainerStatuses"][0]
        assert st["state"]["waiting"]["reason"] == "ContainerCreating"
        c.wait_for("eph", "default", lambda p: "running" in
                   p["status"]["ephemeralContainerStatuses"][0]["state"])
        p = c.wait_for("eph", "default", lambda p: "terminated" in
                       p["status"]["ephemeralContainerStatuses"][0]["state"])
        term = p["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 2 and term["reason"] == "Error"
        c.set_pull_delay(0)
        # Removal and duplicates are rejected as by Kubernetes.
        with pytest.raises(ApiFailure) as e:
            c.request("PATCH", "/api/v1/namespaces/default/pods/eph/ephemeralcontainers",
                      {"spec": {"ephemeralContainers": []}},
                      content_type="application/merge-patch+json")
        assert e.value.status == 422
        assert e.value.body["message"] == ('Pod "eph" is invalid: spec.ephemeralContainers: '
                                           'Forbidden: existing ephemeral containers "e1" may '
                                           "not be removed")
        with pytest.raises(ApiFailure) as e:
            _patch_ephemeral(c, "eph", [{"name": "main", "image": "busybox"}])
        assert e.value.status == 422 and 'Duplicate value: "main"' in e.value.body["message"]
        # PUT of the whole pod (UpdateEphemeralContainers) adds one.
        pod = c.get_pod("eph")
        pod["spec"]["ephemeralContainers"].append(
            {"name": "e2", "image": "busybox", "command": ["sleep", "100"],
             "targetContainerName": "main"})
        c.request("PUT", "/api/v1/namespaces/default/pods/eph/ephemeralcontainers", pod)
        c.wait_for("eph", "default", lambda p: any(
            s["name"] == "e2" and "running" in s["state"]
            for s in p["status"]["ephemeralContainerStatuses"]))
        assert any(p.container == "e2" for p in c.processes("default", "eph"))
        # A switch makes the subresource vanish like on clusters without the feature.
        c.set_ephemeral_supported(False)
        with pytest.raises(ApiFailure) as e:
            _patch_ephemeral(c, "eph", [{"name": "e3", "image": "busybox"}])
        assert e.value.status == 404
        assert e.value.body["message"] == "the server could not find the requested resource"
    finally:
        c.delete_pod("eph")


def test_runtime_capabilities(c: ClusterHandle, box: str) -> None:
    def eff(pod: str) -> int:
        _, out, _, _ = asyncio.run(_exec(c, pod, ["grep", "CapEff", "/proc/self/status"]))
        return int(out.split()[1], 16)

    assert eff(box) & (1 << 13)  # containerd default: NET_RAW
    assert not eff(box) & (1 << 12)  # but not NET_ADMIN
    c.set_runtime("cri-o")
    c.create_pod("crio")
    try:
        assert not eff("crio") & (1 << 13)
    finally:
        c.delete_pod("crio")
    c.set_runtime("containerd")
    c.create_pod("dropall", security_context={"capabilities": {"drop": ["ALL"]}})
    try:
        assert eff("dropall") == 0
    finally:
        c.delete_pod("dropall")


def test_pod_phases_images_and_psa(c: ClusterHandle) -> None:
    c.create_pod("done", command=["sh", "-c", "exit 0"], restart_policy="Never", wait=False)
    c.create_pod("fail", command=["sh", "-c", "exit 5"], restart_policy="Never", wait=False)
    c.create_pod("noimg", image="example/does-not-exist:1", wait=False)
    try:
        assert c.wait_for("done", "default", lambda p: p["status"]["phase"] == "Succeeded")
        p = c.wait_for("fail", "default", lambda p: p["status"]["phase"] == "Failed")
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 5
        p = c.wait_for("noimg", "default", lambda p: p["status"]["containerStatuses"][0]
                       ["state"].get("waiting", {}).get("reason") == "ImagePullBackOff")
        assert p["status"]["phase"] == "Pending"
        assert c.processes("default", "noimg") == []
    finally:
        for n in ("done", "fail", "noimg"):
            c.delete_pod(n)
    with pytest.raises(ApiFailure) as e:
        c.create_pod("r1", namespace="restricted")
    assert e.value.status == 403
    assert e.value.body["message"].startswith(
        'pods "r1" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "main" must set '
        "securityContext.allowPrivilegeEscalation=false)")


def test_processes_include_exec_children_and_delete_kills_all(c: ClusterHandle) -> None:
    c.create_pod("procs", command=["sh", "-c", "sleep 1000 & sleep 1001"])
    _, _, _, st = asyncio.run(_exec(c, "procs", ["sh", "-c", "sleep 1002 >/dev/null 2>&1 &"]))
    assert st["status"] == "Success"
    extra = c.run_in_pod("default", "procs", ["sleep", "1003"])
    procs = c.processes("default", "procs")
    argvs = {tuple(p.argv): p.container for p in procs}
    assert argvs[("sleep", "1000")] == "main" and argvs[("sleep", "1002")] == "main"
    assert argvs[("sleep", "1003")] is None
    pids = [p.pid for p in procs]
    c.delete_pod("procs", grace=1)
    extra.wait(timeout=5)
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        assert stat.split(")")[1].split()[0] == "Z"
