"""Objects, resourceVersions and watch fan-out.

One global resourceVersion counter like etcd's revision: every write bumps it, every event carries
it, and a watch started at RV=N replays the logged events after N before going live.  That is what
kubectl's list-then-watch (``get -w``, ``debug`` waiting for the container) relies on.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace or "", name)

# Enough history for any test run; a watch older than this gets 410 Gone like a compacted etcd.
_LOG_LIMIT = 20000


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    namespace: str
    obj: Obj
    old: Obj | None = None


@dataclass
class Watcher:
    resource: str
    namespace: str | None  # None = all namespaces
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


class TooOld(Exception):
    """The requested resourceVersion is older than the kept history (HTTP 410)."""


class Store:
    def __init__(self) -> None:
        self._objs: dict[Key, Obj] = {}
        self._rv = 1
        self._log: list[Event] = []
        self._watchers: list[Watcher] = []

    @property
    def rv(self) -> int:
        return self._rv

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        obj = self._objs.get((resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        out = [
            copy.deepcopy(o)
            for (r, ns, _), o in self._objs.items()
            if r == resource and (namespace is None or ns == namespace)
        ]
        out.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return out

    def _emit(self, ev: Event) -> None:
        self._log.append(ev)
        if len(self._log) > _LOG_LIMIT:
            del self._log[: len(self._log) - _LOG_LIMIT]
        for w in self._watchers:
            if w.resource == ev.resource and (w.namespace is None or w.namespace == ev.namespace):
                w.queue.put_nowait(ev)

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or replace; stamps a new resourceVersion and emits ADDED/MODIFIED."""
        meta = obj["metadata"]
        key = (resource, meta.get("namespace", ""), meta["name"])
        old = self._objs.get(key)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        stored = copy.deepcopy(obj)
        self._objs[key] = stored
        self._emit(
            Event(self._rv, "MODIFIED" if old else "ADDED", resource, key[1],
                  copy.deepcopy(stored), old)
        )
        return copy.deepcopy(stored)

    def update(self, resource: str, namespace: str, name: str,
               mutate: Callable[[Obj], None]) -> Obj | None:
        """Read-modify-write helper; a no-op change emits nothing (like the real API server)."""
        cur = self._objs.get((resource, namespace, name))
        if cur is None:
            return None
        new = copy.deepcopy(cur)
        mutate(new)
        new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        if new == cur:
            return copy.deepcopy(cur)
        return self.put(resource, new)

    def delete(self, resource: str, namespace: str, name: str) -> Obj | None:
        old = self._objs.pop((resource, namespace, name), None)
        if old is None:
            return None
        self._rv += 1
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(Event(self._rv, "DELETED", resource, namespace, final, old))
        return copy.deepcopy(final)

    def watch(self, resource: str, namespace: str | None, since: int | None) -> Watcher:
        """Register a watcher; with ``since`` the logged events after it are queued first."""
        w = Watcher(resource, namespace)
        if since is not None:
            if self._log and since < self._log[0].rv - 1 and since < self._rv:
                raise TooOld(f"too old resource version: {since} ({self._log[0].rv - 1})")
            for ev in self._log:
                if ev.rv > since and ev.resource == resource and (
                    namespace is None or ev.namespace == namespace
                ):
                    w.queue.put_nowait(ev)
        self._watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        if w in self._watchers:
            self._watchers.remove(w)


# ---- selectors -----------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")


def _split_selector(sel: str) -> list[str]:
    """Split on commas that are not inside parentheses (``env in (a,b)``)."""
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def match_labels(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for req in _split_selector(selector):
        m = _SET_RE.match(req)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            inside = key in labels and labels[key] in vals
            if (op == "in") != inside:
                return False
        elif "!=" in req:
            k, v = (s.strip() for s in req.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in req:
            k, v = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


def field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def match_fields(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    for req in _split_selector(selector):
        if "!=" in req:
            k, v = (s.strip() for s in req.split("!=", 1))
            if field_value(obj, k) == v:
                return False
        else:
            k, v = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if field_value(obj, k) != v:
                return False
    return True
