"""The cluster's names kept current in a NameBook: pods, services and nodes listed once, then
watched (kube/watch.py) in a thread per kind until the capture ends.

What RBAC hides is said, not guessed: a kind that cannot be listed cluster-wide is listed in the
capture's namespace, and what could not be listed at all is returned to be reported.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field, pod_ips
from kubectl_zsniff.kube.watch import Changed, list_and_watch
from kubectl_zsniff.names.book import NameBook, ObjectKey
from kubectl_zsniff.names.map import PodName

KEPT_ERRORS = 20
# Kinds whose pods carry a generated suffix worth stripping to name the workload.
_REPLICASET_HASH_LABEL = "pod-template-hash"


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
    owner = PodName(f"{ns}/{name}", ns, "pod", pod_workload(pod),
                    field(pod, "spec", "nodeName") or None)
    return [(ip, owner) for ip in pod_ips(pod)]


def service_names(svc: JSON) -> list[tuple[str, PodName]]:
    ns, name = field(svc, "metadata", "namespace"), field(svc, "metadata", "name")
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or ()) or (
        [spec["clusterIP"]] if spec.get("clusterIP") else [])
    owner = PodName(f"{ns}/svc/{name}", ns, "service", None)
    return [(str(ip), owner) for ip in ips if ip and ip != "None"]


def node_names(node: JSON) -> list[tuple[str, PodName]]:
    node_name = field(node, "metadata", "name")
    owner = PodName(f"node/{node_name}", None, "node", None, node_name)
    return [
        (str(a.get("address")), owner)
        for a in field(node, "status", "addresses") or ()
        if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
    ]


_NAMERS: dict[str, Callable[[JSON], list[tuple[str, PodName]]]] = {
    "pods": pod_names,
    "services": service_names,
    "nodes": node_names,
}


def object_key(kind: str, obj: JSON) -> ObjectKey:
    return (kind, str(field(obj, "metadata", "namespace") or ""),
            str(field(obj, "metadata", "name") or ""))


class NameWatcher:
    """Fills `book` from the cluster (`load`), then keeps it current (`start` ... `stop`)."""

    def __init__(self, book: NameBook, kube: KubeClient, namespace: str) -> None:
        self.book = book
        self._kube = kube
        self._namespace = namespace
        # Per kind: where it was listed (cluster-wide or the namespace) and at which version.
        self._listed: dict[str, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # The last few failures and how many: a watch retried every second through an hour's
        # outage must not keep every message.
        self._errors: deque[str] = deque(maxlen=KEPT_ERRORS)
        self._error_count = 0

    def load(self) -> list[str]:
        """List every kind into the book; returns what could not be read (RBAC)."""
        missing: list[str] = []
        for kind, namer in _NAMERS.items():
            listed = self._list(kind, missing)
            if listed is None:
                continue
            path, result = listed
            for obj in result.get("items") or ():
                self.book.set_object(object_key(kind, obj), namer(obj), at=0.0)
            self._listed[kind] = (path, str(field(result, "metadata", "resourceVersion") or ""))
        self.book.drain_changes()  # the initial table is written whole, not as changes
        return missing

    def _list(self, kind: str, missing: list[str]) -> tuple[str, JSON] | None:
        path = api_path(kind)
        try:
            return path, self._kube.get(f"list {kind}", path)
        except ZsniffError as err:
            if err.status != ExitStatus.FORBIDDEN:
                raise
        if kind == "nodes":  # cluster-scoped: there is no namespace to fall back to
            missing.append(kind)
            return None
        path = api_path(kind, namespace=self._namespace)
        try:
            result = self._kube.get(f"list {kind}", path)
        except ZsniffError as err:
            if err.status != ExitStatus.FORBIDDEN:
                raise
            missing.append(kind)
            return None
        missing.append(f"{kind} outside {self._namespace}")
        return path, result

    def start(self) -> None:
        """Watch each listed kind from its listed version, in background threads."""
        for kind, (path, rv) in self._listed.items():
            thread = threading.Thread(target=self._follow, args=(kind, path, rv),
                                      name=f"zsniff-watch-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _follow(self, kind: str, path: str, rv: str) -> None:
        namer = _NAMERS[kind]
        try:
            for item in list_and_watch(self._kube, kind, path, resource_version=rv,
                                       stop=self._stop, on_error=self._failed):
                if isinstance(item, Changed):
                    deleted = item.type == "DELETED"
                    self.book.set_object(object_key(kind, item.obj),
                                         [] if deleted else namer(item.obj))
                else:
                    self.book.replace_kind(
                        kind, {object_key(kind, obj): namer(obj) for obj in item.items})
        except ZsniffError as err:  # allowed to list, not to watch: names stay as listed
            self._failed(f"watch {kind}: {err.message}; its names are no longer updated")

    def _failed(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)
            self._error_count += 1

    @property
    def errors(self) -> list[str]:
        """The last KEPT_ERRORS watch or list failures since `start`, oldest first (each was
        retried)."""
        with self._lock:
            return list(self._errors)

    @property
    def error_count(self) -> int:
        """How many failures there were since `start`, also those `errors` no longer holds."""
        with self._lock:
            return self._error_count

    def stop(self) -> None:
        self._stop.set()
