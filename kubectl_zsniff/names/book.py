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

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field, pod_ips
from kubectl_zsniff.names.map import PodName, normalize_ip

# Kinds whose pods carry a generated suffix worth stripping to name the workload.
_REPLICASET_HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True)
class NameChange:
    ip: str
    name: PodName | None  # None: the address was released
    since: float


def pod_workload(pod: JSON) -> str | None:
    for owner in field(pod, "metadata", "ownerReferences") or ():
        kind, name = str(owner.get("kind")), str(owner.get("name"))
        if kind == "ReplicaSet":
            template_hash = (field(pod, "metadata", "labels") or {}).get(_REPLICASET_HASH_LABEL)
            if template_hash and name.endswith("-" + template_hash):
                return "deployment/" + name[: -len(template_hash) - 1]
            return "replicaset/" + name
        return f"{kind.lower()}/{name}"
    return None


def pod_names(pod: JSON) -> list[tuple[str, PodName]]:
    """(ip, name) for each address a live pod owns. Host-network pods own no address."""
    if not pod.get("status") or field(pod, "status", "phase") in ("Succeeded", "Failed"):
        return []
    if field(pod, "spec", "hostNetwork"):
        return []
    ns, name = field(pod, "metadata", "namespace"), field(pod, "metadata", "name")
    owner = PodName(f"{ns}/{name}", ns, "pod", pod_workload(pod))
    return [(ip, owner) for ip in pod_ips(pod)]


def service_names(svc: JSON) -> list[tuple[str, PodName]]:
    ns, name = field(svc, "metadata", "namespace"), field(svc, "metadata", "name")
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or ()) or (
        [spec["clusterIP"]] if spec.get("clusterIP") else [])
    owner = PodName(f"{ns}/svc/{name}", ns, "service", None)
    return [(str(ip), owner) for ip in ips if ip and ip != "None"]


def node_names(node: JSON) -> list[tuple[str, PodName]]:
    owner = PodName(f"node/{field(node, 'metadata', 'name')}", None, "node", None)
    return [
        (str(a.get("address")), owner)
        for a in field(node, "status", "addresses") or ()
        if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
    ]


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
        for kind, namer in _NAMERS.items():
            try:
                result = kube.get(f"list {kind}", api_path(kind))
                cluster_wide = True
            except ZsniffError as err:
                if err.status != ExitStatus.FORBIDDEN:
                    raise
                if kind == "nodes":
                    missing.append(kind)
                    continue
                try:
                    result = kube.get(f"list {kind}", api_path(kind, namespace=namespace))
                    cluster_wide = False
                    missing.append(f"{kind} outside {namespace}")
                except ZsniffError as err2:
                    if err2.status != ExitStatus.FORBIDDEN:
                        raise
                    missing.append(kind)
                    continue
            for obj in result.get("items") or ():
                self.set_object(_key(kind, obj), namer(obj), at=0.0)
            self._resource_versions[kind] = (_rv_of(result) or "", cluster_wide)
        self.drain_changes()  # the initial table is written whole, not as changes
        return missing

    def start_watching(self, kube: KubeClient, namespace: str) -> None:
        """Follow pods, services and nodes in background threads until `stop()`."""
        for kind, (rv, cluster_wide) in self._resource_versions.items():
            thread = threading.Thread(
                target=self._watch_loop,
                args=(kube, kind, api_path(kind, namespace=None if cluster_wide else namespace),
                      rv),
                name=f"zsniff-watch-{kind}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _watch_loop(self, kube: KubeClient, kind: str, path: str, resource_version: str) -> None:
        namer = _NAMERS[kind]
        rv = resource_version
        while not self._stop.is_set():
            try:
                for event in kube.watch(f"watch {kind}", path, 30, resourceVersion=rv,
                                        allowWatchBookmarks=True):
                    if self._stop.is_set():
                        return
                    obj = event.get("object")
                    kind_of_event = event.get("type")
                    if not isinstance(obj, dict):
                        continue
                    if kind_of_event == "ERROR":  # 410 Gone: the version is too old
                        raise _Expired(str(obj.get("message") or "watch expired"))
                    rv = _rv_of(obj) or rv
                    if kind_of_event == "BOOKMARK":
                        continue
                    key = _key(kind, obj)
                    if kind_of_event == "DELETED":
                        self.set_object(key, [])
                    else:
                        self.set_object(key, namer(obj))
            except Exception as exc:  # a lost watch must never stop the capture
                if self._stop.is_set():
                    return
                expired = isinstance(exc, _Expired) or getattr(exc, "status", None) == 410
                status = 410 if expired else getattr(exc, "status", None)
                self.watch_errors.append(f"{kind}: {type(exc).__name__} {status or ''}".strip())
                if expired:
                    with contextlib.suppress(ZsniffError):
                        rv = self._relist(kube, kind, path) or rv
                self._stop.wait(1.0)

    def _relist(self, kube: KubeClient, kind: str, path: str) -> str | None:
        """After a 410 Gone: list again and apply it whole, since events between the expired
        version and now are lost (objects added, changed or deleted meanwhile). Returns the
        list's resourceVersion, where the next watch resumes."""
        result = kube.get(f"list {kind}", path)
        namer = _NAMERS[kind]
        seen = set()
        for obj in result.get("items") or ():
            key = _key(kind, obj)
            seen.add(key)
            self.set_object(key, namer(obj))
        with self._lock:
            gone = [key for key in self._by_object if key[0] == kind and key not in seen]
        for key in gone:
            self.set_object(key, [])
        return _rv_of(result)

    def stop(self) -> None:
        self._stop.set()


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again for a newer one."""


_NAMERS: dict[str, Callable[[JSON], list[tuple[str, PodName]]]] = {
    "pods": pod_names,
    "services": service_names,
    "nodes": node_names,
}


def _rv_of(obj: JSON) -> str | None:
    rv = field(obj, "metadata", "resourceVersion")
    return str(rv) if rv else None


def _key(kind: str, obj: JSON) -> tuple[str, str, str]:
    return (kind, str(field(obj, "metadata", "namespace") or ""),
            str(field(obj, "metadata", "name") or ""))


def _object_key(name: PodName) -> tuple[str, str, str]:
    if name.kind == "node":
        return ("nodes", "", name.name.split("/", 1)[1])
    if name.kind == "service":
        return ("services", name.namespace or "", name.name.split("/", 2)[2])
    return ("pods", name.namespace or "", name.name.split("/", 1)[1])
