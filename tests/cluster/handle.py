"""A Python handle on a running test cluster, for tests.

Talks to the API server like any client (admin token from the kubeconfig) and to the test-only
control API under ``/zsniff-test/``.  ``run_in_pod`` deliberately bypasses the API: it starts a
process straight in the pod's netns, to generate traffic without going through exec.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runtime

KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    container: str | None  # None: not started by the cluster (e.g. run_in_pod)
    argv: list[str]


class ApiFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class PodCalls:
    """Pod calls both clusters' handles make the same way, through their ``request``."""

    pod_timeout = 30.0  # how long a pod may take to start or to go
    poll = 0.05

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", user: str = "admin",
                timeout: float = 30) -> Any:
        raise NotImplementedError

    @staticmethod
    def pod_path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/pods"
        return f"{base}/{name}" if name else base

    def get_pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict(self.request("GET", self.pod_path(namespace, name)))

    def wait_for(self, name: str, namespace: str, predicate: Any,
                 timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.pod_timeout)
        while True:
            pod = self.get_pod(name, namespace)
            if predicate(pod):
                return pod
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {namespace}/{name}: condition not met: {pod['status']}")
            time.sleep(self.poll)

    def wait_pod_running(self, name: str, namespace: str = "default",
                         timeout: float | None = None) -> dict[str, Any]:
        def running(pod: dict[str, Any]) -> bool:
            status = pod.get("status", {})
            return status.get("phase") == "Running" and bool(status.get("podIPs")) and all(
                "running" in s.get("state", {}) for s in status.get("containerStatuses", []))

        return self.wait_for(name, namespace, running, timeout)

    def delete_pod(self, name: str, namespace: str = "default", *, grace: int = 0,
                   wait: bool = True, timeout: float | None = None) -> None:
        try:
            self.request("DELETE", self.pod_path(namespace, name) +
                         f"?gracePeriodSeconds={grace}")
        except ApiFailure as e:
            if e.status != 404:
                raise
            return
        deadline = time.monotonic() + (timeout or self.pod_timeout)
        while wait:
            try:
                self.get_pod(name, namespace)
            except ApiFailure as e:
                if e.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {namespace}/{name} not deleted")
            time.sleep(self.poll)

    def pod_ip(self, ns: str, name: str, family: int = 4) -> str:
        ips = [i["ip"] for i in self.get_pod(name, ns)["status"].get("podIPs", [])]
        return next(ip for ip in ips if (":" in ip) == (family == 6))


class ClusterHandle(PodCalls):
    kind = "double"
    capture_image = "busybox"  # ignored: the double runs the host's tcpdump
    node_names = ("node-a", "node-b")
    limited_context = "zsniff-limited"
    cert_context = "zsniff-cert"

    def __init__(self, state_dir: Path | str = ".zsniff-cluster") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.kubeconfig = self.state_dir / "kubeconfig"
        cfg = json.loads(self.kubeconfig.read_text())
        self.base_url: str = cfg["clusters"][0]["cluster"]["server"]
        self._tokens = {u["name"]: u["user"]["token"] for u in cfg["users"]
                        if "token" in u["user"]}
        info = json.loads((self.state_dir / "server.json").read_text())
        self.prefix: str = info["prefix"]
        self.server_pid: int = info["pid"]
        self.ca_file: Path | None = (self.state_dir / "pki" / "ca.crt"
                                     if self.base_url.startswith("https") else None)
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=ctx))

    # ---- raw HTTP -----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", user: str = "admin",
                timeout: float = 30) -> Any:
        """One API call; returns the decoded JSON or raises ApiFailure with the Status."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._tokens[user]}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiFailure(e.code, parsed) from None
        return json.loads(raw) if raw else None

    # ---- objects ------------------------------------------------------------------------

    @staticmethod
    def _path(kind: str, namespace: str | None, name: str | None = None) -> str:
        resource = {"Pod": "pods", "Service": "services", "Namespace": "namespaces",
                    "Node": "nodes"}[kind]
        base = f"/api/v1/{resource}" if resource in ("namespaces", "nodes") else \
            f"/api/v1/namespaces/{namespace or 'default'}/{resource}"
        return f"{base}/{name}" if name else base

    def apply(self, manifest: dict[str, Any], wait: bool = True) -> dict[str, Any]:
        """Create, or merge-patch when it exists; a Pod is returned once Running."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        ns = meta.get("namespace", "default")
        try:
            obj = self.request("POST", self._path(kind, ns), manifest)
        except ApiFailure as e:
            if e.status != 409:
                raise
            obj = self.request("PATCH", self._path(kind, ns, meta["name"]), manifest,
                               content_type="application/merge-patch+json")
        if kind == "Pod" and wait:
            return self.wait_pod_running(meta["name"], ns)
        return dict(obj)

    def create_pod(self, name: str, namespace: str = "default",
                   command: list[str] | None = None, image: str = "busybox",
                   labels: dict[str, str] | None = None, node: str | None = None, *,
                   security_context: dict[str, Any] | None = None,
                   restart_policy: str | None = None, wait: bool = True,
                   containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Create a one-container pod (``main``) running ``command``; returns it when Running."""
        c: dict[str, Any] = {"name": "main", "image": image,
                             "command": command or ["sleep", "3600"]}
        if security_context:
            c["securityContext"] = security_context
        spec: dict[str, Any] = {"containers": containers or [c]}
        if node:
            spec["nodeName"] = node
        if restart_policy:
            spec["restartPolicy"] = restart_policy
        manifest = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace,
                                 "labels": labels or {}}, "spec": spec}
        obj = self.request("POST", self._path("Pod", namespace), manifest)
        return self.wait_pod_running(name, namespace) if wait else dict(obj)

    # ---- below the API ------------------------------------------------------------------

    def _ctl_pod(self, ns: str, pod: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/zsniff-test/pods/{ns}/{pod}"))

    def netns(self, ns: str, pod: str) -> str:
        return str(self._ctl_pod(ns, pod)["netns"])

    def run_in_pod(self, ns: str, pod: str, argv: list[str],
                   **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` as root with all capabilities in the pod's netns (not via the API)."""
        netns = self.netns(ns, pod)
        return subprocess.Popen(["nsenter", f"--net={runtime.NETNS_DIR / netns}", *argv],
                                **popen_kwargs)

    def processes(self, ns: str, pod: str) -> list[ProcInfo]:
        """Every live process in the pod's netns (from /proc), with the container it runs in."""
        return [ProcInfo(p["pid"], p["container"], p["argv"])
                for p in self._ctl_pod(ns, pod)["processes"]]

    # ---- control API --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return dict(self.request("GET", "/zsniff-test/state"))

    def set_faults(self, *, exec_drop_after_bytes: int | None = None, exec_drop_count: int = 1,
                   exec_drop_match: str = "",
                   api_fail_code: int | None = None, api_fail_count: int = 1,
                   api_fail_retry_after: int = 1, api_fail_match: str = "",
                   api_delay: float | None = None, api_delay_count: int = 1,
                   api_delay_match: str = "") -> dict[str, Any]:
        """Arm faults.  ``*_match`` is a substring of the request path+query (\"\" = any)."""
        body: dict[str, Any] = {}
        if exec_drop_after_bytes is not None:
            body.update(exec_drop_after=exec_drop_after_bytes, exec_drop_count=exec_drop_count,
                        exec_drop_match=exec_drop_match)
        if api_fail_code is not None:
            body.update(api_fail_code=api_fail_code, api_fail_count=api_fail_count,
                        api_fail_retry_after=api_fail_retry_after, api_fail_match=api_fail_match)
        if api_delay is not None:
            body.update(api_delay=api_delay, api_delay_count=api_delay_count,
                        api_delay_match=api_delay_match)
        return dict(self.request("POST", "/zsniff-test/faults", body))

    def clear_faults(self) -> None:
        self.request("DELETE", "/zsniff-test/faults")

    def _settings(self, **kw: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/zsniff-test/settings", kw))

    def set_ephemeral_supported(self, supported: bool) -> None:
        self._settings(ephemeral_supported=supported)

    def set_exec_v5(self, supported: bool) -> None:
        """False: exec offers only v4.channel.k8s.io (no stdin close), as before 1.29."""
        self._settings(exec_v5=supported)

    def set_pull_delay(self, seconds: float) -> None:
        self._settings(pull_delay=seconds)

    def set_runtime(self, name: str) -> None:
        """``containerd`` (default caps include NET_RAW) or ``cri-o`` (no NET_RAW)."""
        self._settings(runtime=name)

    def set_runtime_default_caps(self, caps: list[str]) -> None:
        self._settings(default_caps=caps)

    def reset(self) -> None:
        """Back to defaults: no faults, ephemeral containers on, no pull delay, containerd."""
        self.clear_faults()
        self._settings(ephemeral_supported=True, exec_v5=True, pull_delay=0,
                       runtime="containerd")

    # ---- helpers for tests ----------------------------------------------------------------

    def admin_token(self) -> str:
        return str(self._tokens["admin"])

    def steer_next_ip(self, ip: str) -> None:
        """Nothing to do: the double hands a freed address to the next pod by itself."""

    def owned_netns(self) -> list[str]:
        return runtime.netns_list(self.prefix)


def kubectl_binary(version: str) -> Path:
    return KUBECTL_DIR / f"kubectl.{version}"
