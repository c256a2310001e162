"""Follow the pods a workload or selector stands for while a capture runs.

One thread per source lists its pods, then watches them (resuming from the list's version, so
no pod is missed between the two; a watch that expires, 410 Gone, is followed by a new list).
A running pod that is not captured yet is announced once; what happens to it is the caller's.
Pods that go away need no word from here: their capture stream ends by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field
from kubectl_zsniff.kube.targets import PodSource

WATCH_SECONDS = 30
RETRY_SECONDS = 1.0

OnPod = Callable[[PodSource, JSON], None]


def joinable(pod: JSON) -> bool:
    """A pod worth joining: running, with an address, not on its way out."""
    return (field(pod, "status", "phase") == "Running"
            and not field(pod, "metadata", "deletionTimestamp")
            and bool(field(pod, "status", "podIP")))


def leaving(pod: JSON) -> bool:
    """Deleted (terminating) or finished: its containers stop, and any capture in it."""
    return (bool(field(pod, "metadata", "deletionTimestamp"))
            or field(pod, "status", "phase") in ("Succeeded", "Failed"))


def pod_key(pod: JSON) -> tuple[str, str]:
    return (str(field(pod, "metadata", "namespace") or ""),
            str(field(pod, "metadata", "name") or ""))


class PodFollower:
    """Calls `on_new_pod(source, pod)` (from its own threads) for each pod of a source that
    becomes joinable and is not among `known` yet; each pod is announced once."""

    def __init__(self, kube: KubeClient, sources: list[PodSource],
                 known: set[tuple[str, str]], on_new_pod: OnPod) -> None:
        self.kube = kube
        self.sources = sources
        self.on_new_pod = on_new_pod
        self.errors: list[str] = []  # watch failures (retried): for --debug and the tests
        self._known = set(known)
        # Pods of the sources that are going or gone (deleted, evicted, finished): a capture
        # stream that ends in one of them ended because the pod went away.
        self.leaving: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for source in self.sources:
            thread = threading.Thread(target=self._follow, args=(source,), daemon=True,
                                      name=f"zsniff-watch-follow-{source.label}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _offer(self, source: PodSource, pod: JSON) -> None:
        if not joinable(pod):
            return
        key = pod_key(pod)
        with self._lock:
            if key in self._known:
                return
            self._known.add(key)
        self.on_new_pod(source, pod)

    def _follow(self, source: PodSource) -> None:
        path = api_path("pods", namespace=source.namespace)
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self.kube.get("list pods", path, labelSelector=source.selector)
                    for pod in listed.get("items") or ():
                        self._offer(source, pod)
                    rv = str(field(listed, "metadata", "resourceVersion") or "") or None
                for event in self.kube.watch(
                        "watch pods", path, WATCH_SECONDS, labelSelector=source.selector,
                        resourceVersion=rv, allowWatchBookmarks=True):
                    if self._stop.is_set():
                        return
                    obj = event.get("object")
                    if not isinstance(obj, dict):
                        continue
                    if event.get("type") == "ERROR":  # 410 Gone: list again
                        rv = None
                        break
                    rv = str(field(obj, "metadata", "resourceVersion") or "") or rv
                    if event.get("type") == "DELETED" or leaving(obj):
                        self.leaving.add(pod_key(obj))
                    elif event.get("type") in ("ADDED", "MODIFIED"):
                        self._offer(source, obj)
            except Exception as exc:  # a lost watch must never stop a capture
                if self._stop.is_set():
                    return
                status = getattr(exc, "status", None)
                self.errors.append(f"{source.label}: {type(exc).__name__} {status or ''}")
                if status == 410:
                    rv = None
                self._stop.wait(RETRY_SECONDS)
