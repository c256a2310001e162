"""A handle on the running real cluster with the same methods the e2e tests use on the test
double (tests/cluster/handle.py), so one test can run against both.

Everything goes through the real API as the cluster admin, except what a test needs below the
API: ``run_in_pod`` starts a host program in a pod's network namespace (traffic generators,
reference tcpdumps), ``processes`` lists what runs in a pod, from /proc and the pod's cgroups.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.cluster.handle import ApiFailure, PodCalls, ProcInfo

from . import cluster, images, node
from .cluster import CTR, LIMITED_CONTEXT, Api
from .node import NodeRecord

# Images the tests name on the double (which ignores them) and what runs them here.
IMAGE_FOR = {"busybox": images.TOOLS}


class RealClusterHandle(PodCalls):
    kind = "real"
    capture_image = images.CAPTURE
    node_names = (node.NODE_NAME,)
    limited_context = LIMITED_CONTEXT
    pod_timeout = 90.0  # kubelet starts real containers
    poll = 0.1
    cert_context = "zsniff-real"  # its admin user has a client certificate and no token

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.kubeconfig = self.state_dir / "kubeconfig"
        record = NodeRecord.load(self.state_dir)
        if record is None:
            raise RuntimeError(f"no real cluster is up in {self.state_dir}")
        self.record = record
        self.prefix = record.prefix
        self.base_url = f"https://127.0.0.1:{record.relay_port}"
        self._api = {user: Api(self.state_dir, record.relay_port, user)
                     for user in ("admin", "limited")}
        self.ctr = [CTR, "--address", str(self.state_dir / "containerd" / "containerd.sock"),
                    "-n", "k8s.io"]

    # ---- the API ----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", user: str = "admin",
                timeout: float = 30) -> Any:
        status, obj = self._api[user].call(method, path, body, timeout, content_type)
        if status >= 400:
            raise ApiFailure(status, obj)
        return obj

    def create_pod(self, name: str, namespace: str = "default",
                   command: list[str] | None = None, image: str = "busybox",
                   labels: dict[str, str] | None = None, node: str | None = None, *,
                   security_context: dict[str, Any] | None = None,
                   restart_policy: str | None = None, wait: bool = True,
                   containers: list[dict[str, Any]] | None = None,
                   host_dirs: tuple[str, ...] = ()) -> dict[str, Any]:
        """A one-container pod (``main``); ``host_dirs`` are mounted read-only at the same
        path (the double's pods see the host's files; here a test must ask for them)."""
        c: dict[str, Any] = {"name": "main", "image": IMAGE_FOR.get(image, image),
                             "command": command or ["sleep", "3600"],
                             "imagePullPolicy": "IfNotPresent"}
        volumes = [{"name": f"host{i}", "hostPath": {"path": d, "type": "Directory"}}
                   for i, d in enumerate(host_dirs)]
        if volumes:
            c["volumeMounts"] = [{"name": v["name"], "mountPath": d, "readOnly": True}
                                 for v, d in zip(volumes, host_dirs, strict=False)]
        if security_context:
            c["securityContext"] = security_context
        spec: dict[str, Any] = {"containers": containers or [c],
                                # sleep as PID 1 ignores SIGTERM: do not wait 30 s for it.
                                "terminationGracePeriodSeconds": 1}
        if volumes:
            spec["volumes"] = volumes
        if restart_policy:
            spec["restartPolicy"] = restart_policy
        # One node here: a test's node name (the double has two) is not a constraint.
        manifest = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                    "spec": spec}
        obj = self.request("POST", self.pod_path(namespace), manifest)
        return self.wait_pod_running(name, namespace) if wait else dict(obj)

    # ---- below the API ----------------------------------------------------------------------

    def _task_pids(self) -> dict[str, int]:
        """containerd's running tasks: container id -> PID of its first process."""
        out = subprocess.run([*self.ctr, "tasks", "ls"], capture_output=True, text=True,
                             timeout=30).stdout
        pids = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "RUNNING":
                pids[fields[0]] = int(fields[1])
        return pids

    @staticmethod
    def _container_ids(pod: dict[str, Any]) -> dict[str, str]:
        status = pod.get("status", {})
        ids = {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for s in status.get(key, []):
                if s.get("containerID"):
                    ids[s["containerID"].split("://", 1)[-1]] = s["name"]
        return ids

    def pod_pid(self, ns: str, pod: str) -> int:
        """A PID in the pod's network namespace (its first running container's)."""
        tasks = self._task_pids()
        for container_id in self._container_ids(self.get_pod(pod, ns)):
            if container_id in tasks:
                return tasks[container_id]
        raise RuntimeError(f"no running container of {ns}/{pod} found in containerd")

    def netns_path(self, ns: str, pod: str) -> str:
        return f"/proc/{self.pod_pid(ns, pod)}/ns/net"

    def run_in_pod(self, ns: str, pod: str, argv: list[str],
                   **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` (a host program, as root) in the pod's network namespace only."""
        pid = self.pod_pid(ns, pod)
        return subprocess.Popen(["nsenter", "-t", str(pid), "--net", "--", *argv],
                                **popen_kwargs)

    def processes(self, ns: str, pod: str) -> list[ProcInfo]:
        """Every live process in the pod's network namespace, with the container it runs in
        (None: not started by Kubernetes, e.g. run_in_pod; "(sandbox)": the pause process)."""
        names = self._container_ids(self.get_pod(pod, ns))
        try:
            target = node.ns_inode(self.pod_pid(ns, pod), "net")
        except RuntimeError:
            return []  # no container runs (Pending, finished): nothing runs in the pod
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or node.ns_inode(entry, "net") != target:
                continue
            try:
                cgroups = Path(f"/proc/{entry}/cgroup").read_text()
                argv = [a.decode(errors="replace") for a in
                        Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            container: str | None = None
            for line in cgroups.splitlines():
                path = line.split(":", 2)[-1]
                if "/kubepods" in path:
                    container = names.get(path.rstrip("/").rsplit("/", 1)[-1], "(sandbox)")
                    break
            if argv:
                out.append(ProcInfo(int(entry), container, argv))
        return out

    def admin_token(self) -> str:
        """A bearer token of a cluster admin (the API server's static token file)."""
        line = (self.state_dir / "pki" / "tokens.csv").read_text().splitlines()[0]
        return line.split(",", 1)[0]

    def steer_next_ip(self, ip: str) -> None:
        """Make host-local IPAM hand out `ip` next. It allocates round-robin after the last
        address it reserved, so a freed address comes back only after the range wraps (which
        a busy node reaches by itself); the tests that need a reused address get it now."""
        network = self.state_dir / "cni-ipam" / "zsniff-real"
        # A pod deleted with grace 0 leaves the API at once; kubelet tears its sandbox down
        # (CNI DEL frees the address) a moment later.
        deadline = time.monotonic() + 60
        while (network / ip).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ip} is still reserved by host-local")
            time.sleep(0.1)
        family = "0" if ":" not in ip else "1"
        (network / f"last_reserved_ip.{family}").write_text(str(ipaddress.ip_address(ip) - 1))

    @property
    def server_pid(self) -> int:
        return self.record.pids["kube-apiserver"]

    def restart(self, component: str, down_for: float = 0.0) -> None:
        """Kill a component of the node with SIGKILL, start it again, wait until it serves."""
        cluster.restart(self.state_dir, self.record, component, down_for)
        if component == "kube-apiserver":
            api = self._api["admin"]
            deadline = time.monotonic() + 120
            while not api.ok("/readyz"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the API server did not come back")
                time.sleep(0.2)

    # ---- what only the double can do ----------------------------------------------------------

    def reset(self) -> None:
        """Nothing to reset: the real cluster has no fault switches."""
