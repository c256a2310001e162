"""The name book: names by the packet's time, the watches' relist after 410 Gone, and what
RBAC hides, against a fake API client (the calls zsniff makes, the answers a server gives)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.namewatch import NameWatcher
from kubectl_zsniff.names.book import HistoryBound, NameBook
from kubectl_zsniff.names.map import PodName


def pod(name: str, ip: str, ns: str = "shop", rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {}, "status": {"phase": "Running", "podIPs": [{"ip": ip}]}}


def listing(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(items)}


class FakeKube:
    """Answers `get` from `lists[path]` (a list of answers, the last one repeats, an
    exception is raised), and `watch` from `watches[path]` in turn; records every call.
    `done` is set once a watch of `until` finds no more answers."""

    def __init__(self, lists: dict[str, list[Any]],
                 watches: dict[str, list[list[dict[str, Any]]]] | None = None) -> None:
        self.lists = lists
        self.watches = dict(watches or {})
        self.gets: list[str] = []
        self.watch_calls: list[tuple[str, str]] = []
        self.done = threading.Event()
        self.until = "/api/v1/pods"

    def get(self, action: str, path: str, **query: Any) -> Any:
        self.gets.append(path)
        answers = self.lists.get(path, [ZsniffError("forbidden", "", ExitStatus.FORBIDDEN)])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, action: str, path: str, timeout: int, **query: Any) -> Iterator[Any]:
        self.watch_calls.append((path, query.get("resourceVersion")))
        answers = self.watches.get(path) or []
        if not answers:
            if path == self.until:
                self.done.set()
            threading.Event().wait(0.05)
            return
        yield from answers.pop(0)


def test_lookup_names_each_packet_by_its_owner_at_the_packet_time() -> None:
    book = NameBook(clock=lambda: 0.0)
    old, new = PodName("shop/old", "shop"), PodName("shop/new", "shop")
    book.set_object(("pods", "shop", "old"), [("10.1.0.9", old)], at=100.0)
    book.set_object(("pods", "shop", "old"), [], at=200.0)
    book.set_object(("pods", "shop", "new"), [("10.1.0.9", new)], at=300.0)
    assert book.lookup("10.1.0.9", 150.0) == old
    assert book.lookup("10.1.0.9", 250.0) is None  # released, not yet reused
    assert book.lookup("10.1.0.9", 350.0) == new
    assert book.lookup("10.1.0.9", 50.0) == old  # before we heard of it: its first owner
    assert book.lookup("10.1.0.9") == new  # no time: the current owner


def test_watch_expired_with_410_relists_and_applies_what_changed_meanwhile() -> None:
    path = "/api/v1/pods"
    kube = FakeKube(
        {path: [listing("10", pod("a", "10.0.0.1")),
                # the relist: a was deleted and b created while the watch was gone
                listing("50", pod("b", "10.0.0.2"))]},
        watches={path: [[{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                               "message": "too old resource version"}}],
                 [{"type": "ADDED", "object": pod("c", "10.0.0.3", rv="51")}]]},
    )
    kube.lists["/api/v1/services"] = [listing("1")]
    kube.lists["/api/v1/nodes"] = [listing("1")]
    book = NameBook()
    watcher = NameWatcher(book, kube, "shop")  # type: ignore[arg-type]
    assert watcher.load() == []
    assert book.lookup("10.0.0.1") == PodName("shop/a", "shop", "pod", None)
    watcher.start()
    try:
        assert kube.done.wait(10), kube.watch_calls
    finally:
        watcher.stop()
    pod_watches = [rv for p, rv in kube.watch_calls if p == path]
    assert pod_watches[:3] == ["10", "50", "51"]  # the relist's version, then the events'
    assert book.lookup("10.0.0.1") is None  # deleted during the gap: released
    assert book.lookup("10.0.0.2") == PodName("shop/b", "shop", "pod", None)
    assert book.lookup("10.0.0.3") == PodName("shop/c", "shop", "pod", None)
    assert any("410" in e for e in watcher.errors), watcher.errors


def test_names_limited_by_rbac_fall_back_to_the_namespace_and_say_what_is_missing() -> None:
    forbidden = ZsniffError("forbidden", "", ExitStatus.FORBIDDEN)
    kube = FakeKube({
        "/api/v1/pods": [forbidden],
        "/api/v1/namespaces/shop/pods": [listing("7", pod("web", "10.0.0.5"))],
        "/api/v1/services": [forbidden],
        "/api/v1/namespaces/shop/services": [forbidden],
        "/api/v1/nodes": [forbidden],
    })
    kube.until = "/api/v1/namespaces/shop/pods"
    book = NameBook()
    watcher = NameWatcher(book, kube, "shop")  # type: ignore[arg-type]
    missing = watcher.load()
    assert missing == ["pods outside shop", "services", "nodes"]
    assert book.lookup("10.0.0.5") == PodName("shop/web", "shop", "pod", None)
    watcher.start()
    try:
        assert kube.done.wait(10)
    finally:
        watcher.stop()
    # Only what could be listed is watched, where it could be listed.
    assert {p for p, _ in kube.watch_calls} == {"/api/v1/namespaces/shop/pods"}


def test_names_fail_loudly_on_errors_other_than_rbac() -> None:
    down = ZsniffError("unreachable", "", ExitStatus.UNREACHABLE)
    kube = FakeKube({"/api/v1/pods": [down]})
    try:
        NameWatcher(NameBook(), kube, "shop").load()  # type: ignore[arg-type]
    except ZsniffError as err:
        assert err.status == ExitStatus.UNREACHABLE
    else:
        raise AssertionError("an unreachable server was taken for a missing permission")


# ---- the bound on history: a live book over hours of pods coming and going ----------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def churn(book: NameBook, clock: Clock, pods: int, every: float = 10.0) -> None:
    """`pods` pods made and deleted one after another, each on a new address (host-local IPAM
    hands addresses round-robin), `every` seconds apart."""
    for n in range(pods):
        ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        key = ("pods", "shop", f"job-{n}")
        book.set_object(key, [(ip, PodName(f"shop/job-{n}", "shop"))])
        clock.now += every / 2
        book.set_object(key, [])
        clock.now += every / 2


def test_pods_gone_for_longer_than_the_retention_are_forgotten() -> None:
    """Ten hours of a pod every 10 s (3,600 pods, each on its own address): the book holds the
    last hour's, not all of them. Without the bound it holds every address it ever saw."""
    clock = Clock()
    book = NameBook(clock=clock, history=HistoryBound(retain=3600.0, max_past=1_000_000))
    web = PodName("shop/web", "shop")
    book.set_object(("pods", "shop", "web"), [("10.9.9.9", web)])
    churn(book, clock, 3600)
    addresses, owners = book.history_size()
    assert addresses <= 3600 / 10 + 2, addresses  # an hour of pods, and web
    assert owners <= 2 * addresses
    assert book.lookup("10.9.9.9") == web  # a current owner is never forgotten
    assert book.lookup("10.9.9.9", 1.0) == web
    # A pod deleted half an hour ago is still named for the traffic of its time...
    recent = 3600 - 180
    ip = f"10.0.{recent // 256}.{recent % 256}"
    assert book.lookup(ip, recent * 10.0 + 1) == PodName(f"shop/job-{recent}", "shop")
    # ... one gone for nine hours is unknown, not someone else.
    assert book.lookup("10.0.0.5", 51.0) is None
    assert book.lookup("10.0.0.5") is None


def test_at_most_max_past_owners_are_kept_however_fast_the_churn() -> None:
    clock = Clock()
    book = NameBook(clock=clock, history=HistoryBound(retain=1e9, max_past=500))
    churn(book, clock, 5000, every=0.01)
    addresses, owners = book.history_size()
    assert owners <= 2 * 500 + 2, owners
    last = 4999
    assert book.lookup(f"10.0.{last // 256}.{last % 256}", last * 0.01) == PodName(
        f"shop/job-{last}", "shop")


def test_a_reused_address_forgets_its_old_owners_as_unknown_not_as_the_current_one() -> None:
    """One address owned by pod after pod: its history is bounded too, and a time before
    what is kept is answered as unknown, never as the owner that holds now."""
    clock = Clock()
    book = NameBook(clock=clock, history=HistoryBound(retain=100.0, max_past=1_000_000))
    for n in range(1000):
        key = ("pods", "shop", f"p{n}")
        book.set_object(key, [("10.1.0.9", PodName(f"shop/p{n}", "shop"))])
        clock.now += 5.0
        book.set_object(key, [])
        clock.now += 5.0
    book.set_object(("pods", "shop", "now"), [("10.1.0.9", PodName("shop/now", "shop"))])
    _, owners = book.history_size()
    assert owners <= 2 * 100 / 10 + 4, owners
    assert book.lookup("10.1.0.9") == PodName("shop/now", "shop")
    assert book.lookup("10.1.0.9", 9_950.0) == PodName("shop/p995", "shop")
    assert book.lookup("10.1.0.9", 12.0) is None


def test_changes_not_drained_are_one_per_address_not_one_per_event() -> None:
    """A capture writing no pcapng never drains the changes: they must not pile up."""
    clock = Clock()
    book = NameBook(clock=clock)
    for n in range(2000):
        key = ("pods", "shop", f"p{n % 10}")
        book.set_object(key, [(f"10.1.0.{n % 10}", PodName(f"shop/p{n}", "shop"))])
        clock.now += 1.0
    changes = book.drain_changes()
    assert len(changes) == 10
    assert [c.name.name for c in changes if c.name] == [f"shop/p{n}" for n in range(1990, 2000)]


def test_a_book_read_from_a_file_keeps_all_its_history() -> None:
    book = NameBook(history=None)
    for n in range(3000):
        book.record("10.1.0.9", PodName(f"shop/p{n}", "shop"), float(n))
    assert book.history_size() == (1, 3000)
    assert book.lookup("10.1.0.9", 0.5) == PodName("shop/p0", "shop")


def test_watch_failures_keep_a_count_and_the_last_few_not_every_message() -> None:
    """An API server away for an hour fails each watch once a second: the summary says how
    many times and the last reason; the watcher does not hold 10,000 messages for that."""
    watcher = NameWatcher(NameBook(), FakeKube({}), "shop")
    for n in range(10_000):
        watcher._failed(f"watch pods: connection refused ({n})")
    assert watcher.error_count == 10_000
    assert len(watcher.errors) <= 20
    assert watcher.errors[-1] == "watch pods: connection refused (9999)"
