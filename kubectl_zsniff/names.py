"""The name book: which pod, service or node owns an address, kept live by watches.

It answers `lookup(ip, ts)` (the NameMap protocol) with history, so an address reused by a new
pod still names the old pod for traffic from before the change.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ExitStatus, ZsniffError
from .kube import KubeClient
from .namemap import PodName, normalize_ip

# Kinds whose pods carry a generated suffix worth stripping to name the workload.
_REPLICASET_HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True)
class NameChange:
    ip: str
    name: PodName | None  # None: the address was released
    since: float


def pod_workload(pod: Any) -> str | None:
    for owner in pod.metadata.owner_references or []:
        kind, name = owner.kind, owner.name
        if kind == "ReplicaSet":
            template_hash = (pod.metadata.labels or {}).get(_REPLICASET_HASH_LABEL)
            if template_hash and name.endswith("-" + template_hash):
                return "deployment/" + name[: -len(template_hash) - 1]
            return "replicaset/" + name
        return f"{kind.lower()}/{name}"
    return None


def pod_names(pod: Any) -> list[tuple[str, PodName]]:
    """(ip, name) for each address a live pod owns. Host-network pods own no address."""
    status = pod.status
    if status is None or (status.phase in ("Succeeded", "Failed")):
        return []
    if pod.spec is not None and pod.spec.host_network:
        return []
    ns, name = pod.metadata.namespace, pod.metadata.name
    ips = [p.ip for p in (status.pod_ips or []) if p.ip] or (
        [status.pod_ip] if status.pod_ip else []
    )
    owner = PodName(f"{ns}/{name}", ns, "pod", pod_workload(pod))
    return [(ip, owner) for ip in ips]


def service_names(svc: Any) -> list[tuple[str, PodName]]:
    ns, name = svc.metadata.namespace, svc.metadata.name
    spec = svc.spec
    ips = list(spec.cluster_ips or []) or ([spec.cluster_ip] if spec.cluster_ip else [])
    owner = PodName(f"{ns}/svc/{name}", ns, "service", None)
    return [(ip, owner) for ip in ips if ip and ip != "None"]


def node_names(node: Any) -> list[tuple[str, PodName]]:
    owner = PodName(f"node/{node.metadata.name}", None, "node", None)
    addresses = (node.status.addresses or []) if node.status else []
    return [(a.address, owner) for a in addresses if a.type in ("InternalIP", "ExternalIP")]


class NameBook:
    """IP -> owner, current and historical. Thread-safe: watches update it from threads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Per address: times (ascending) and owners; owners[i] holds from times[i] on.
        self._times: dict[str, list[float]] = {}
        self._owners: dict[str, list[PodName | None]] = {}
        # Owners per object key (kind, ns, name) to release addresses on DELETED.
        self._by_object: dict[tuple[str, str, str], list[str]] = {}
        self._pending: list[NameChange] = []
        # Per kind: the resourceVersion listed and whether the list was cluster-wide, where
        # the watches resume.
        self._resource_versions: dict[str, tuple[str, bool]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.watch_errors: list[str] = []

    # -- updates -------------------------------------------------------------------------

    def set_object(
        self,
        key: tuple[str, str, str],
        entries: Iterable[tuple[str, PodName]],
        at: float | None = None,
    ) -> None:
        """Record that object `key` now owns exactly these addresses."""
        now = self._clock() if at is None else at
        new = {ip: owner for ip, owner in ((normalize_ip(i), o) for i, o in entries) if ip}
        with self._lock:
            old = self._by_object.get(key, [])
            for ip in old:
                if ip not in new and self._current_locked(ip) is not None:
                    cur = self._current_locked(ip)
                    if cur is not None and _object_key(cur) == key:
                        self._record_locked(ip, None, now)
            for ip, owner in new.items():
                if self._current_locked(ip) != owner:
                    self._record_locked(ip, owner, now)
            if new:
                self._by_object[key] = list(new)
            else:
                self._by_object.pop(key, None)

    def record(self, ip: str, owner: PodName | None, at: float) -> None:
        """Record that `ip` belongs to `owner` from time `at` on (names read back from a file)."""
        key = normalize_ip(ip)
        if key is not None:
            with self._lock:
                self._record_locked(key, owner, at)

    def _current_locked(self, ip: str) -> PodName | None:
        owners = self._owners.get(ip)
        return owners[-1] if owners else None

    def _record_locked(self, ip: str, owner: PodName | None, at: float) -> None:
        times = self._times.setdefault(ip, [])
        owners = self._owners.setdefault(ip, [])
        if owners and owners[-1] == owner:
            return
        times.append(at)
        owners.append(owner)
        self._pending.append(NameChange(ip, owner, at))

    # -- queries -------------------------------------------------------------------------

    def lookup(self, ip: str, ts: float | None = None) -> PodName | None:
        key = normalize_ip(ip)
        if key is None:
            return None
        with self._lock:
            owners = self._owners.get(key)
            if not owners:
                return None
            if ts is None:
                return owners[-1]
            times = self._times[key]
            index = bisect.bisect_right(times, ts) - 1
            # Traffic seen before we first heard of an address belongs to its first owner.
            return owners[max(index, 0)]

    def current(self) -> dict[str, PodName]:
        with self._lock:
            return {ip: owners[-1] for ip, owners in self._owners.items() if owners[-1]}

    def drain_changes(self) -> list[NameChange]:
        with self._lock:
            changes, self._pending = self._pending, []
        return changes

    def history(self) -> dict[str, list[tuple[float, PodName | None]]]:
        with self._lock:
            return {
                ip: list(zip(self._times[ip], owners, strict=False))
                for ip, owners in self._owners.items()
            }

    # -- loading from the cluster --------------------------------------------------------

    def load(self, kube: KubeClient, namespace: str) -> list[str]:
        """Fill the book from the cluster; returns what could not be read (RBAC)."""
        missing: list[str] = []
        sources: list[
            tuple[
                str,
                Callable[..., Any],
                Callable[..., Any],
                Callable[[Any], list[tuple[str, PodName]]],
            ]
        ] = [
            (
                "pods",
                kube.core.list_pod_for_all_namespaces,
                kube.core.list_namespaced_pod,
                pod_names,
            ),
            (
                "services",
                kube.core.list_service_for_all_namespaces,
                kube.core.list_namespaced_service,
                service_names,
            ),
            ("nodes", kube.core.list_node, kube.core.list_node, node_names),
        ]
        for kind, list_all, list_ns, namer in sources:
            try:
                result = kube.call(f"list {kind}", list_all)
                cluster_wide = True
            except ZsniffError as err:
                if err.status != ExitStatus.FORBIDDEN:
                    raise
                if kind == "nodes":
                    missing.append(kind)
                    continue
                try:
                    result = kube.call(f"list {kind}", list_ns, namespace)
                    cluster_wide = False
                    missing.append(f"{kind} outside {namespace}")
                except ZsniffError as err2:
                    if err2.status != ExitStatus.FORBIDDEN:
                        raise
                    missing.append(kind)
                    continue
            for obj in result.items:
                self.set_object(_key(kind, obj), namer(obj), at=0.0)
            self._resource_versions[kind] = (result.metadata.resource_version, cluster_wide)
        self.drain_changes()  # the initial table is written whole, not as changes
        return missing

    def start_watching(self, kube: KubeClient, namespace: str) -> None:
        """Follow pods, services and nodes in background threads until `stop()`."""
        namers = {"pods": pod_names, "services": service_names, "nodes": node_names}
        for kind, (rv, cluster_wide) in self._resource_versions.items():
            thread = threading.Thread(
                target=self._watch_loop,
                args=(kube, kind, namespace, cluster_wide, rv, namers[kind]),
                name=f"zsniff-watch-{kind}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _watch_loop(
        self,
        kube: KubeClient,
        kind: str,
        namespace: str,
        cluster_wide: bool,
        resource_version: str,
        namer: Callable[[Any], list[tuple[str, PodName]]],
    ) -> None:
        from kubernetes import watch

        core = kube.core
        func: Callable[..., Any]
        args: tuple[str, ...]
        if kind == "nodes":
            func, args = core.list_node, ()
        elif cluster_wide:
            func = (
                core.list_pod_for_all_namespaces
                if kind == "pods"
                else core.list_service_for_all_namespaces
            )
            args = ()
        else:
            func = core.list_namespaced_pod if kind == "pods" else core.list_namespaced_service
            args = (namespace,)
        rv = resource_version
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    func, *args, resource_version=rv, timeout_seconds=30, allow_watch_bookmarks=True
                ):
                    if self._stop.is_set():
                        w.stop()
                        return
                    obj = event["object"]
                    kind_of_event = event["type"]
                    if kind_of_event == "BOOKMARK":
                        rv = _rv_of(obj) or rv
                        continue
                    rv = obj.metadata.resource_version or rv
                    key = _key(kind, obj)
                    if kind_of_event == "DELETED":
                        self.set_object(key, [])
                    else:
                        self.set_object(key, namer(obj))
            except Exception as exc:  # a lost watch must never stop the capture
                if self._stop.is_set():
                    return
                status = getattr(exc, "status", None)
                self.watch_errors.append(f"{kind}: {type(exc).__name__} {status or ''}".strip())
                if status == 410:
                    with contextlib.suppress(ZsniffError):
                        rv = _rv_of(kube.call(f"list {kind}", func, *args)) or rv
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()


def _rv_of(obj: Any) -> str | None:
    if isinstance(obj, dict):
        return (obj.get("metadata") or {}).get("resourceVersion")
    meta = getattr(obj, "metadata", None)
    return getattr(meta, "resource_version", None)


def _key(kind: str, obj: Any) -> tuple[str, str, str]:
    return (kind, obj.metadata.namespace or "", obj.metadata.name)


def _object_key(name: PodName) -> tuple[str, str, str]:
    if name.kind == "node":
        return ("nodes", "", name.name.split("/", 1)[1])
    if name.kind == "service":
        return ("services", name.namespace or "", name.name.split("/", 2)[2])
    return ("pods", name.namespace or "", name.name.split("/", 1)[1])
