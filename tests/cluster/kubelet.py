"""The node agent: turns Pod objects into netns + processes and reports their status.

All status changes go through the store, so every change is a MODIFIED watch event, which is
what kubectl and the zsniff client wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtime
from .store import Obj, Store

log = logging.getLogger("kubelet")
NODES = ("node-a", "node-b")
# Real kubelets give up on image pulls with ErrImagePull and then back off.
IMAGE_PULL_FAIL_MARK = "does-not-exist"
BACKOFF_AFTER = 1.5


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_id(image: str) -> str:
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    if "/" not in repo:
        repo = f"docker.io/library/{repo}"
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def container_status(c: dict[str, Any], state: dict[str, Any], *, cid: str = "",
                     ready: bool = False) -> dict[str, Any]:
    st: dict[str, Any] = {
        "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
        "restartCount": 0, "started": "running" in state, "state": state, "lastState": {},
    }
    if cid:
        st["containerID"] = f"containerd://{cid}"
        st["imageID"] = image_id(c.get("image", ""))
    return st


@dataclass
class ContainerRun:
    name: str
    kind: str  # "container" or "ephemeral"
    proc: subprocess.Popen[bytes] | None = None
    stdin_keep: int | None = None  # write end held open for stdin:true containers
    log_file: Path | None = None


@dataclass
class PodRun:
    namespace: str
    name: str
    index: int
    netns: str | None = None
    ipv4: str = ""
    ipv6: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    sessions: dict[int, str] = field(default_factory=dict)  # session id -> container name
    deleting: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Kubelet:
    def __init__(self, store: Store, net: runtime.Network, log_dir: Path) -> None:
        self.store = store
        self.net = net
        self.log_dir = log_dir
        self.pods: dict[tuple[str, str], PodRun] = {}
        # Indices (hence addresses) in use, including pods still being torn down. A new pod
        # takes the lowest free one: freed pod IPs are reused at once (host-local, the reference
        # CNI IPAM, goes round-robin instead, so the real cluster steers it in tests).
        self._used_indices: set[int] = set()
        self._next_node = 0
        self.pull_delay = 0.0
        self.default_caps: tuple[str, ...] = runtime.CONTAINERD_CAPS
        self.runtime_name = "containerd"

    # ---- scheduling ---------------------------------------------------------------------

    def schedule(self, pod: Obj) -> None:
        spec = pod["spec"]
        if not spec.get("nodeName"):
            spec["nodeName"] = NODES[self._next_node % len(NODES)]
            self._next_node += 1
        v4, v6 = runtime.NODE_ADDRS.get(spec["nodeName"], runtime.NODE_ADDRS["node-a"])
        pod["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": now()}],
            "hostIP": v4, "hostIPs": [{"ip": v4}, {"ip": v6}],
            "qosClass": "BestEffort",
            "containerStatuses": [
                container_status(c, {"waiting": {"reason": "ContainerCreating"}})
                for c in spec["containers"]
            ],
        }

    def _task(self, pr: PodRun, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        pr.tasks.add(t)
        t.add_done_callback(pr.tasks.discard)

    def _update(self, pr: PodRun, mutate: Callable[[Obj], None]) -> Obj | None:
        return self.store.update("pods", pr.namespace, pr.name, mutate)

    def start(self, pod: Obj) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        index = next(i for i in range(1, len(self._used_indices) + 2)
                     if i not in self._used_indices)
        self._used_indices.add(index)
        pr = PodRun(ns, name, index)
        self.pods[(ns, name)] = pr
        self._task(pr, self._run_pod(pr, pod))

    async def _run_pod(self, pr: PodRun, pod: Obj) -> None:
        try:
            pr.netns, pr.ipv4, pr.ipv6 = await asyncio.to_thread(self.net.add_pod, pr.index)
        except subprocess.CalledProcessError as e:
            log.error("netns setup failed for %s/%s: %s", pr.namespace, pr.name, e.stderr)
            return

        def set_ips(p: Obj) -> None:
            p["status"]["podIP"] = pr.ipv4
            p["status"]["podIPs"] = [{"ip": pr.ipv4}, {"ip": pr.ipv6}]
            p["status"]["startTime"] = now()
            p["status"]["conditions"].append(
                {"type": "Initialized", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": now()})

        self._update(pr, set_ips)
        pr.ready.set()
        for c in pod["spec"]["containers"]:
            self._task(pr, self._run_container(pr, c, "container"))

    def start_ephemeral(self, ns: str, name: str, container: dict[str, Any]) -> None:
        pr = self.pods.get((ns, name))
        if pr is None or pr.deleting:
            return
        self._task(pr, self._run_container(pr, container, "ephemeral"))

    # ---- containers -------------------------------------------------------------------------

    def _set_cstatus(self, pr: PodRun, kind: str, st: dict[str, Any]) -> None:
        key = "containerStatuses" if kind == "container" else "ephemeralContainerStatuses"

        def mutate(p: Obj) -> None:
            lst = p["status"].setdefault(key, [])
            for i, old in enumerate(lst):
                if old["name"] == st["name"]:
                    lst[i] = st
                    break
            else:
                lst.append(st)
            self._recompute_phase(p)

        self._update(pr, mutate)

    @staticmethod
    def _recompute_phase(p: Obj) -> None:
        status = p["status"]
        sts = status.get("containerStatuses", [])
        states = [next(iter(s["state"]), "waiting") for s in sts]
        if p["metadata"].get("deletionTimestamp"):
            pass
        elif all(s == "terminated" for s in states) and p["spec"].get("restartPolicy") != "Always":
            codes = [s["state"]["terminated"]["exitCode"] for s in sts]
            if p["spec"].get("restartPolicy") == "Never" or all(c == 0 for c in codes):
                status["phase"] = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        elif any(s in ("running", "terminated") for s in states):
            status["phase"] = "Running"
        ready = bool(states) and all(s == "running" for s in states)
        conds = [c for c in status["conditions"] if c["type"] not in ("ContainersReady", "Ready")]
        for t in ("ContainersReady", "Ready"):
            conds.append({"type": t, "status": "True" if ready else "False",
                          "lastProbeTime": None, "lastTransitionTime": now()})
        # Keep timestamps stable when nothing changed, so no spurious MODIFIED events.
        old = {c["type"]: c for c in status["conditions"]}
        for c in conds:
            o = old.get(c["type"])
            if o and o["status"] == c["status"]:
                c["lastTransitionTime"] = o["lastTransitionTime"]
        status["conditions"] = conds

    def _pod_obj(self, pr: PodRun) -> Obj | None:
        return self.store.get("pods", pr.namespace, pr.name)

    async def _run_container(self, pr: PodRun, c: dict[str, Any], kind: str) -> None:
        await pr.ready.wait()
        name = c["name"]
        image = c.get("image", "")
        if kind == "ephemeral":
            self._set_cstatus(pr, kind, container_status(
                c, {"waiting": {"reason": "ContainerCreating"}}))
        if IMAGE_PULL_FAIL_MARK in image:
            self._set_cstatus(pr, kind, container_status(c, {"waiting": {
                "reason": "ErrImagePull",
                "message": f'rpc error: code = NotFound desc = failed to pull and unpack image '
                           f'"{image}": not found'}}))
            await asyncio.sleep(BACKOFF_AFTER)
            self._set_cstatus(pr, kind, container_status(c, {"waiting": {
                "reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}))
            return
        if self.pull_delay:
            await asyncio.sleep(self.pull_delay)
        pod = self._pod_obj(pr)
        if pod is None or pr.deleting or pr.netns is None:
            return
        argv = list(c.get("command") or []) + list(c.get("args") or [])
        if not argv:
            argv = ["sh"]  # busybox's default entrypoint; no image metadata is modelled
        profile = runtime.profile_for(c, pod["spec"], self.default_caps)
        logf = self.log_dir / f"{pr.namespace}_{pr.name}_{name}.log"
        cr = ContainerRun(name, kind, log_file=logf)
        stdin: int = subprocess.DEVNULL
        if c.get("stdin"):
            # Like a container with stdin open and nobody attached: reads block, no EOF.
            r, w = os.pipe()
            stdin, cr.stdin_keep = r, w
        try:
            with open(logf, "ab") as out:
                proc = runtime.spawn(pr.netns, argv, profile, runtime.container_env(c, pr.name),
                                     cwd=c.get("workingDir") or "/", stdin=stdin,
                                     stdout=out, stderr=subprocess.STDOUT)
        except OSError as e:
            self._set_cstatus(pr, kind, container_status(c, {"waiting": {
                "reason": "CreateContainerError", "message": str(e)}}))
            return
        finally:
            if c.get("stdin"):
                os.close(stdin)
        cr.proc = proc
        pr.containers[name] = cr
        pr.sessions[proc.pid] = name
        cid = hashlib.sha256(f"{pr.namespace}/{pr.name}/{name}/{proc.pid}".encode()).hexdigest()
        started = now()
        self._set_cstatus(pr, kind, container_status(
            c, {"running": {"startedAt": started}}, cid=cid, ready=kind == "container"))
        rc = await wait_exit(proc)
        self._kill_container_sessions(pr, name, proc.pid)
        if cr.stdin_keep is not None:
            os.close(cr.stdin_keep)
            cr.stdin_keep = None
        if pr.deleting:
            return
        term: dict[str, Any] = {
            "exitCode": rc if rc >= 0 else 128 - rc,
            "reason": "Completed" if rc == 0 else "Error",
            "startedAt": started, "finishedAt": now(),
            "containerID": f"containerd://{cid}",
        }
        if rc < 0:
            term["signal"] = -rc
        self._set_cstatus(pr, kind, container_status(c, {"terminated": term}, cid=cid))

    def _kill_container_sessions(self, pr: PodRun, name: str, main_sid: int) -> None:
        """A container's pid namespace dies with its main process: so do its other processes."""
        ino = runtime.netns_inode(pr.netns) if pr.netns else None
        if ino is None:
            return
        sids = {sid for sid, cname in pr.sessions.items() if cname == name}
        sids.add(main_sid)
        for pid in runtime.pids_in_netns({ino}):
            st = runtime.proc_stat(pid)
            if st and st.sid in sids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # ---- exec, introspection ----------------------------------------------------------------

    def exec_process(self, pr: PodRun, pod: Obj, container: dict[str, Any], argv: list[str],
                     stdin: int | None, stdout: int | None,
                     stderr: int | None) -> subprocess.Popen[bytes]:
        assert pr.netns is not None
        profile = runtime.profile_for(container, pod["spec"], self.default_caps)
        proc = runtime.spawn(pr.netns, argv, profile, runtime.container_env(container, pr.name),
                             cwd=container.get("workingDir") or "/", stdin=stdin,
                             stdout=stdout, stderr=stderr)
        pr.sessions[proc.pid] = container["name"]
        return proc

    def processes(self, ns: str, name: str) -> list[dict[str, Any]]:
        pr = self.pods.get((ns, name))
        if pr is None or pr.netns is None:
            return []
        ino = runtime.netns_inode(pr.netns)
        if ino is None:
            return []
        out = []
        for pid in runtime.pids_in_netns({ino}):
            st = runtime.proc_stat(pid)
            if st is not None:
                out.append({"pid": pid, "container": pr.sessions.get(st.sid),
                            "argv": st.argv})
        return out

    # ---- deletion -----------------------------------------------------------------------

    async def delete(self, ns: str, name: str, grace: float) -> None:
        pr = self.pods.pop((ns, name), None)
        if pr is not None:
            pr.deleting = True
            for t in list(pr.tasks):
                if t is not asyncio.current_task():
                    t.cancel()
            if pr.netns:
                ino = runtime.netns_inode(pr.netns)
                if ino is not None:
                    await asyncio.to_thread(runtime.kill_netns_processes, {ino}, grace)
                await asyncio.to_thread(self.net.remove_pod, pr.index)
            self._used_indices.discard(pr.index)
            for cr in pr.containers.values():
                if cr.stdin_keep is not None:
                    with contextlib.suppress(OSError):
                        os.close(cr.stdin_keep)
                if cr.proc is not None:
                    cr.proc.poll()
        self.store.delete("pods", ns, name)

    def shutdown(self) -> None:
        for pr in self.pods.values():
            pr.deleting = True
            for t in pr.tasks:
                t.cancel()
        runtime.cleanup_prefix(self.net.prefix)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child without a thread: a pidfd becomes readable when the process exits."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return await asyncio.to_thread(proc.wait)
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()
