"""The name book: which pod, service or node owns an address, and since when.

It answers `lookup(ip, ts)` (the NameMap protocol) with history, so an address reused by a new
pod still names the old pod for traffic from before the change. Pure: the cluster's watches
(kube/namewatch.py) and names read back from a file (offline.py) fill it alike.

A live book runs for hours while pods come and go, so its history is bounded (HistoryBound):
an owner that stopped owning its address more than `retain` seconds ago is forgotten, and so is
the oldest-ended beyond `max_past` past owners. A forgotten time is answered as unknown (None),
never as another owner. What the capture files need is not here: the pipeline states names in
the files as they change, and offline enrichment reads them back from the files.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kubectl_zsniff.names.map import PodName, normalize_ip

# What an object is known by: (kind as in the API path, namespace or "", name).
ObjectKey = tuple[str, str, str]


@dataclass(frozen=True)
class NameChange:
    ip: str
    name: PodName | None  # None: the address was released
    since: float


@dataclass(frozen=True)
class HistoryBound:
    """How much past a live book keeps. An hour covers what asks for the past while the capture
    runs: Zeek logs a connection with its start time once it has been idle for 5 minutes (TCP,
    its default) or the capture ends, and a gone pod's connections end with it. 10,000 past
    owners (a few MB) bound a cluster that churns faster than that."""

    retain: float = 3600.0  # seconds after an owner stopped owning its address
    max_past: int = 10_000


LIVE_HISTORY = HistoryBound()


class NameBook:
    """IP -> owner, current and historical. Thread-safe: watches update it from threads.

    `history`: None keeps every past owner (a book read from one file, which is bounded by
    it); a bound applies to times on the book's clock, the live watches' times.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 history: HistoryBound | None = LIVE_HISTORY) -> None:
        self._clock = clock
        self._history = history
        self._lock = threading.Lock()
        # Per address: times (ascending) and owners; owners[i] holds from times[i] on.
        self._times: dict[str, list[float]] = {}
        self._owners: dict[str, list[PodName | None]] = {}
        # Owners per object key (kind, ns, name) to release addresses on DELETED.
        self._by_object: dict[ObjectKey, list[str]] = {}
        # The last change per address since the last drain: a reader that drains rarely (or,
        # writing no pcapng, never) holds one entry per address, not one per event.
        self._pending: dict[str, NameChange] = {}
        # (when it ended, address) of every past owner, in the order they ended.
        self._ended: deque[tuple[float, str]] = deque()

    # -- updates -------------------------------------------------------------------------

    def set_object(
        self,
        key: ObjectKey,
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
            self._forget_locked(self._clock())

    def replace_kind(self, kind: str,
                     objects: Mapping[ObjectKey, Iterable[tuple[str, PodName]]]) -> None:
        """Record that the objects of `kind` are now exactly these (a list read again after a
        watch lost events): the ones not in it are gone, and release their addresses."""
        with self._lock:
            gone = [key for key in self._by_object if key[0] == kind and key not in objects]
        for key in gone:
            self.set_object(key, [])
        for key, entries in objects.items():
            self.set_object(key, entries)

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
        if owners and self._history is not None:
            self._ended.append((at, ip))
        times.append(at)
        owners.append(owner)
        self._pending.pop(ip, None)  # re-inserted last: changes stay in the order they came
        self._pending[ip] = NameChange(ip, owner, at)

    def _forget_locked(self, now: float) -> None:
        """Forget the past owners the bound leaves out, oldest-ended first."""
        bound = self._history
        if bound is None:
            return
        ended = self._ended
        while ended and (ended[0][0] < now - bound.retain or len(ended) > bound.max_past):
            end, ip = ended.popleft()
            self._forget_before_locked(ip, end)

    def _forget_before_locked(self, ip: str, end: float) -> None:
        times = self._times.get(ip)
        if times is None:
            return  # forgotten already
        owners = self._owners[ip]
        # owners[k] holds at `end`: every owner before it had ended by then.
        k = bisect.bisect_right(times, end) - 1
        if k == len(owners) - 1 and owners[k] is None:
            del self._times[ip], self._owners[ip]  # released that long ago: nothing is left
            return
        if k <= 0:
            return
        if owners[k] is None:
            del times[:k], owners[:k]
            return
        # Keep an unknown (None) in front of the owner that holds, so that a time before it
        # is answered as unknown, not as that owner (lookup's rule for times before any).
        del times[:k - 1], owners[:k - 1]
        owners[0] = None

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
            changes, self._pending = self._pending, {}
        return list(changes.values())

    def history_size(self) -> tuple[int, int]:
        """(addresses, owners current and past) held: what the bound keeps in check."""
        with self._lock:
            return len(self._owners), sum(len(o) for o in self._owners.values())


def _object_key(name: PodName) -> ObjectKey:
    if name.kind == "node":
        return ("nodes", "", name.name.split("/", 1)[1])
    if name.kind == "service":
        return ("services", name.namespace or "", name.name.split("/", 2)[2])
    return ("pods", name.namespace or "", name.name.split("/", 1)[1])
