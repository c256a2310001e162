"""The name book: names by the packet's time, the watches' relist after 410 Gone, and what
RBAC hides, against a fake API client (the calls zsniff makes, the answers a server gives)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.namewatch import NameWatcher
from kubectl_zsniff.names.book import NameBook
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
