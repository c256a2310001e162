"""The one list-and-watch driver: a list, then watch events from its resourceVersion, and a new
list whenever a watch fails or expires.

A watch that ends in an ERROR event (410 Gone: the version is older than etcd keeps) or fails
while reading has lost events; only a new list is sure to be right, so every failure is followed
by one (a `Listed` the consumer applies whole) rather than a watch resumed from the old version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field

# Server-side length of one watch request; the driver opens the next one at its end.
WATCH_SECONDS = 30
# Pause after a failed watch or list, so a server that refuses does not spin the loop.
RETRY_SECONDS = 1.0
# Refusals that no retry will change: raised to the caller.
_FINAL = (ExitStatus.FORBIDDEN, ExitStatus.UNAUTHORIZED)


@dataclass(frozen=True)
class Listed:
    """Every object as of `resource_version`: the consumer replaces what it knew."""

    items: list[JSON]
    resource_version: str


@dataclass(frozen=True)
class Changed:
    """One object ADDED, MODIFIED or DELETED."""

    type: str
    obj: JSON


class WatchExpired(Exception):
    """A watch answered with an ERROR event (typically 410 Gone)."""


def list_and_watch(
    kube: KubeClient,
    kind: str,
    path: str,
    *,
    resource_version: str | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    on_error: Callable[[str], None] | None = None,
    **query: str,
) -> Iterator[Listed | Changed]:
    """`Listed`, then `Changed` events, until `stop` is set or `deadline` (time.monotonic())
    passes. Given a `resource_version` (the caller has just listed), the first list is skipped.

    The first list's failure is raised: the caller cannot start without it, and so are RBAC
    and credential refusals, which no retry changes. Other failures go to `on_error` and are
    retried after RETRY_SECONDS: a lost watch must not end a capture.
    """
    until = _Until(deadline, stop)
    rv = resource_version
    must_list = rv is None
    while not until.over():
        if must_list:
            listing = _list(kube, kind, path, query, first=rv is None, on_error=on_error)
            if listing is None:
                until.pause()
                continue
            rv = str(field(listing, "metadata", "resourceVersion") or "")
            must_list = False
            yield Listed(list(listing.get("items") or ()), rv)
            continue
        try:
            for reached, change in _watch(kube, kind, path, until.watch_seconds(), rv, query):
                rv = reached  # where the next watch resumes
                if until.over():
                    return
                if change is not None:
                    yield change
        except Exception as exc:
            if until.over():
                return
            if _final(exc):
                raise
            _report(on_error, kind, "watch", exc)
            must_list = True
            until.pause()


@dataclass(frozen=True)
class _Until:
    """How long the driver goes on: until `stop` is set or `deadline` passes."""

    deadline: float | None
    stop: threading.Event | None

    def over(self) -> bool:
        return (self.stop is not None and self.stop.is_set()) or (
            self.deadline is not None and time.monotonic() >= self.deadline)

    def pause(self) -> None:
        seconds = RETRY_SECONDS
        if self.deadline is not None:
            seconds = max(0.0, min(seconds, self.deadline - time.monotonic()))
        if self.stop is not None:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)

    def watch_seconds(self) -> int:
        """One watch request's server-side length: ends by the deadline, at least 1 s."""
        if self.deadline is None:
            return WATCH_SECONDS
        return max(1, min(WATCH_SECONDS, int(self.deadline - time.monotonic()) or 1))


def _list(kube: KubeClient, kind: str, path: str, query: dict[str, str], *, first: bool,
          on_error: Callable[[str], None] | None) -> JSON | None:
    """A list; None when it failed and is worth retrying (reported). The first list's failure
    is raised: the caller cannot start without it."""
    try:
        return kube.get(f"list {kind}", path, **query)
    except Exception as exc:
        if first or _final(exc):
            raise
        _report(on_error, kind, "list", exc)
        return None


def pod_versions(kube: KubeClient, namespace: str, name: str, *,
                 deadline: float) -> Iterator[JSON | None]:
    """Each version of one pod as it changes, until `deadline`; None when a list finds no such
    pod. A DELETED event alone is passed over, as before: the pod's end shows in its status."""
    for item in list_and_watch(kube, "pods", api_path("pods", namespace=namespace),
                               deadline=deadline, fieldSelector=f"metadata.name={name}"):
        if isinstance(item, Listed):
            yield item.items[0] if item.items else None
        elif item.type != "DELETED":
            yield item.obj


def _watch(kube: KubeClient, kind: str, path: str, seconds: int, rv: str | None,
           query: dict[str, str]) -> Iterator[tuple[str | None, Changed | None]]:
    """One watch request: (the version reached, the change or None for a bookmark)."""
    for event in kube.watch(f"watch {kind}", path, seconds, resourceVersion=rv,
                            allowWatchBookmarks="true", **query):
        obj, event_type = event.get("object"), event.get("type")
        if not isinstance(obj, dict):
            continue
        if event_type == "ERROR":
            raise WatchExpired(
                f"watch expired ({obj.get('code') or '?'} {obj.get('reason') or ''}): "
                f"{obj.get('message') or ''}".replace("  ", " ").rstrip(": "))
        rv = str(field(obj, "metadata", "resourceVersion") or rv)
        change = Changed(str(event_type), obj) if event_type in _CHANGES else None
        yield rv, change


_CHANGES = ("ADDED", "MODIFIED", "DELETED")


def _final(exc: Exception) -> bool:
    return isinstance(exc, ZsniffError) and exc.status in _FINAL


def _report(on_error: Callable[[str], None] | None, kind: str, what: str,
            exc: Exception) -> None:
    if on_error is not None:
        on_error(f"{what} {kind}: {exc or type(exc).__name__}")
