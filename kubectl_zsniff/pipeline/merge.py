"""Packets of several pods into one time order: a bounded reorder window.

Each pod's stream is in time order by itself (tcpdump writes as it captures), but the streams
reach zsniff through separate exec connections, each with its own delay. The window holds every
packet until either the newest timestamp seen from any pod is `window` past it, or it has
waited `window` of (local, monotonic) time; packets leave in timestamp order (ties: in arrival
order). The watermark only rises, so what leaves is sorted, except for a packet that arrives
when packets newer than it have already left (its stream lagged the others by more than the
window): it is written at once, never dropped, and counted (`late`, `max_backstep_ns`).

Costs: latency, each packet waits at most `window` (the default 250 ms; a live Wireshark
shows packets that much later); memory, the packets of one window (at the 66 MB/s the stream
path reaches on the real cluster, ~17 MB), bounded by `max_bytes`, beyond which the oldest
packets leave early (`forced`).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kubectl_zsniff.words import plural

T = TypeVar("T")

DEFAULT_WINDOW_NS = 250_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class MergeStats:
    late: int = 0  # packets written after a newer one had left
    max_backstep_ns: int = 0  # how far back in time the latest of those went
    forced: int = 0  # packets that left early because the window was full


# One held packet: (timestamp, arrival number, size, item). A tuple, so that the heap compares
# in C: the arrival numbers differ, so items are never compared. (A dataclass with order=True
# compared in Python and took about half of the multi-pod path's time: bench/bench_merge.py.)
_Held = tuple[int, int, int, T]


class ReorderWindow(Generic[T]):
    """Push (timestamp, size, item); take what may leave, in timestamp order."""

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_ns < 0:
            raise ValueError("the window cannot be negative")
        self.window_ns = window_ns
        self.max_bytes = max_bytes
        self.clock = clock
        self.stats = MergeStats()
        self._heap: list[_Held[T]] = []
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, ts_ns), arrival order
        self._seq = 0
        self._held_bytes = 0
        self._newest_ns: int | None = None
        self._watermark: int | None = None  # everything at or before it may leave
        self._last_out_ns: int | None = None

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def push(self, ts_ns: int, size: int, item: T) -> None:
        heapq.heappush(self._heap, (ts_ns, self._seq, size, item))
        self._seq += 1
        self._held_bytes += size
        self._arrivals.append((self.clock(), ts_ns))
        if self._newest_ns is None or ts_ns > self._newest_ns:
            self._newest_ns = ts_ns

    def ready(self) -> list[T]:
        """What may leave now, in order: past the window in packet time or in waiting time,
        or pushed out by a full window."""
        if not self._heap:
            self._arrivals.clear()
            return []
        assert self._newest_ns is not None
        mark = self._newest_ns - self.window_ns
        waited = self.clock() - self.window_ns / 1e9
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= waited:
            mark = max(mark, arrivals.popleft()[1])
        self._raise(mark)
        out = self._release_to(self._watermark)
        while self._held_bytes > self.max_bytes and self._heap:
            out.append(self._pop())
            self.stats.forced += 1
            self._raise(self._last_out_ns)
        return out

    def drain(self) -> list[T]:
        """Everything held, in order (the capture is over)."""
        out = [self._pop() for _ in range(len(self._heap))]
        self._arrivals.clear()
        return out

    def notes(self) -> list[str]:
        """What the window did that the user may want to know, for the summary."""
        stats = self.stats
        notes = []
        if stats.late:
            notes.append(
                f"{plural(stats.late, 'packet')} left the {self.window_ns / 1e6:g} ms "
                "reorder window out of time order (their pod's stream lagged the others by "
                f"more than the window; up to {stats.max_backstep_ns / 1e6:.1f} ms back)")
        if stats.forced:
            notes.append(
                f"{plural(stats.forced, 'packet')} left the reorder window early: it was full "
                f"({self.max_bytes // (1024 * 1024)} MiB)")
        return notes

    def _raise(self, mark: int | None) -> None:
        if mark is not None and (self._watermark is None or mark > self._watermark):
            self._watermark = mark

    def _release_to(self, mark: int | None) -> list[T]:
        out: list[T] = []
        heap = self._heap
        while heap and mark is not None and heap[0][0] <= mark:
            out.append(self._pop())
        return out

    def _pop(self) -> T:
        ts_ns, _, size, item = heapq.heappop(self._heap)
        self._held_bytes -= size
        last = self._last_out_ns
        if last is not None and ts_ns < last:
            self.stats.late += 1
            self.stats.max_backstep_ns = max(self.stats.max_backstep_ns, last - ts_ns)
        else:
            self._last_out_ns = ts_ns
        return item
