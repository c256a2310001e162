"""Follow the pods a workload or selector stands for while a capture runs.

One thread per source lists its pods, then watches them, through the one list-and-watch driver
(kube/watch.py: no pod is missed between list and watch; a lost watch is followed by a list).
A running pod that is not captured yet is announced once; what happens to it is the caller's.
Pods that go away (deleted, finished, or missing from a new list) are put in `leaving`: their
capture stream ends by itself, and the run reads there that the pod went away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field
from kubectl_zsniff.kube.targets import PodSource
from kubectl_zsniff.kube.watch import Listed, list_and_watch

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
                 known: set[tuple[str, str]], on_new_pod: OnPod,
                 on_gave_up: Callable[[str], None]) -> None:
        self.kube = kube
        self.sources = sources
        self.on_new_pod = on_new_pod
        self.on_gave_up = on_gave_up  # why a source is no longer followed
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
        selected: set[tuple[str, str]] = set()  # what this source has matched so far
        try:
            for item in list_and_watch(self.kube, "pods", path, stop=self._stop,
                                       on_error=self.errors.append,
                                       labelSelector=source.selector):
                if isinstance(item, Listed):
                    present = {pod_key(pod) for pod in item.items}
                    self.leaving.update(selected - present)  # deleted while unwatched
                    selected |= present
                    for pod in item.items:
                        self._seen(source, "MODIFIED", pod)
                else:
                    selected.add(pod_key(item.obj))
                    self._seen(source, item.type, item.obj)
        except Exception as exc:  # refused (RBAC) or the first list failed: stop following
            if not self._stop.is_set():
                self.on_gave_up(f"{source.label}: not following its pods any more: "
                                f"{getattr(exc, 'message', None) or exc}")

    def _seen(self, source: PodSource, change: str, pod: JSON) -> None:
        if change == "DELETED" or leaving(pod):
            self.leaving.add(pod_key(pod))
        else:
            self._offer(source, pod)
