"""The reorder window, by property over seeded random captures: what comes out is what went in
(a permutation), in time order whenever the pods' streams lag each other by less than the
window, and every step back in time is counted and bounded as stated."""

from __future__ import annotations

import random

import pytest

from kubectl_zsniff.pipeline.merge import ReorderWindow

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> float:
        return self.now_ns / 1e9


def simulate(rng: random.Random, lanes: int, packets: int, window_ns: int, max_delay_ns: int,
             max_bytes: int = 1 << 40) -> tuple[list[tuple[int, int, int]], ReorderWindow]:
    """Pods capture packets in time order; each stream delivers them in its order after a delay
    that varies (0..max_delay). Returns what left the window, and the window."""
    clock = Clock()
    merger: ReorderWindow[tuple[int, int, int]] = ReorderWindow(window_ns, max_bytes, clock)
    events = []
    for lane in range(lanes):
        ts = rng.randrange(0, 50 * MS)
        arrival = 0
        for i in range(packets):
            ts += rng.choice((0, rng.randrange(1, 5 * MS)))  # equal stamps happen too
            # A stream is FIFO: a packet never arrives before the one captured before it.
            arrival = max(arrival, ts + rng.randrange(0, max_delay_ns + 1))
            events.append((arrival, lane, i, ts))
    events.sort()
    out: list[tuple[int, int, int]] = []
    for n, (arrival, lane, i, ts) in enumerate(events):
        clock.now_ns = arrival
        merger.push(ts, rng.randrange(60, 1500), (ts, lane, i))
        out += merger.ready()
        following = events[n + 1][0] if n + 1 < len(events) else arrival + 2 * window_ns
        if following > arrival and rng.random() < 0.3:  # the stats timer, before the next
            clock.now_ns = rng.randrange(arrival, following + 1)
            out += merger.ready()
    out += merger.drain()
    return out, merger


def pushed(lanes: int, out: list[tuple[int, int, int]]) -> None:
    """Each lane's packets each came out once, in that lane's own order."""
    for lane in range(lanes):
        mine = [i for _, pod, i in out if pod == lane]
        assert mine == sorted(mine) and mine == list(range(len(mine)))


@pytest.mark.parametrize("seed", range(40))
def test_lags_within_the_window_come_out_in_time_order(seed: int) -> None:
    rng = random.Random(seed)
    lanes, packets, window = rng.randrange(2, 6), rng.randrange(1, 300), 250 * MS
    out, merger = simulate(rng, lanes, packets, window, max_delay_ns=window)
    assert len(out) == lanes * packets and len(set(out)) == len(out)  # a permutation
    pushed(lanes, out)
    times = [ts for ts, _, _ in out]
    assert times == sorted(times)
    assert merger.stats.late == 0 and merger.stats.max_backstep_ns == 0
    assert len(merger) == 0 and merger.held_bytes == 0


@pytest.mark.parametrize("seed", range(40))
def test_longer_lags_are_written_anyway_and_every_step_back_is_counted(seed: int) -> None:
    rng = random.Random(1000 + seed)
    lanes, packets, window = rng.randrange(2, 6), rng.randrange(1, 300), 20 * MS
    out, merger = simulate(rng, lanes, packets, window, max_delay_ns=rng.randrange(0, 400 * MS))
    assert len(out) == lanes * packets and len(set(out)) == len(out)
    pushed(lanes, out)
    newest, steps_back, deepest = -1, 0, 0
    for ts, _, _ in out:
        if ts < newest:
            steps_back += 1
            deepest = max(deepest, newest - ts)
        newest = max(newest, ts)
    assert merger.stats.late == steps_back
    assert merger.stats.max_backstep_ns == deepest


def test_a_full_window_lets_the_oldest_leave_early() -> None:
    rng = random.Random(7)
    out, merger = simulate(rng, 3, 200, 10_000 * MS, max_delay_ns=50 * MS, max_bytes=20_000)
    assert merger.stats.forced > 0
    assert len(out) == 600 and len(set(out)) == 600
    pushed(3, out)


def test_a_quiet_capture_waits_no_longer_than_the_window() -> None:
    clock = Clock()
    merger: ReorderWindow[str] = ReorderWindow(250 * MS, 1 << 20, clock)
    merger.push(5 * MS, 100, "only")
    assert merger.ready() == []  # nothing newer yet, and it has not waited
    clock.now_ns = 249 * MS
    assert merger.ready() == []
    clock.now_ns = 250 * MS
    assert merger.ready() == ["only"]


def test_equal_times_keep_their_arrival_order() -> None:
    merger: ReorderWindow[str] = ReorderWindow(0, 1 << 20, Clock())
    for name in ("a", "b", "c"):
        merger.push(7, 1, name)
    assert merger.ready() == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("0", 0.0), ("1s", 1.0), ("5m", 300.0), ("1m30s", 90.0), ("90", 90.0),
    ("1h30m", 5400.0), ("1.5s", 1.5),
])
def test_the_window_is_given_as_a_duration(text: str, seconds: float) -> None:
    from kubectl_zsniff.cli.app import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["banana", "5x", "ms", "1ms5s"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    from kubectl_zsniff.cli.app import parse_duration

    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
