"""The one list-and-watch driver, and the capture container's wait that rides on it, against a
fake API client: expiry relists, refusals are final, deadlines and stops end the loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube import watch
from kubectl_zsniff.kube.container import wait_until_running
from kubectl_zsniff.kube.watch import Changed, Listed, list_and_watch
from tests.unit.test_names import FakeKube, listing, pod

PODS = "/api/v1/namespaces/shop/pods"
EXPIRED = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                       "message": "too old resource version"}}


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "RETRY_SECONDS", 0.01)


def test_an_expired_watch_is_followed_by_a_new_list_and_reported() -> None:
    kube = FakeKube({PODS: [listing("10", pod("a", "10.0.0.1")), listing("50")]},
                    watches={PODS: [[{"type": "ADDED", "object": pod("b", "10.0.0.2", rv="11")},
                                     EXPIRED],
                                    [{"type": "DELETED", "object": pod("b", "10.0.0.2",
                                                                       rv="51")}]]})
    errors: list[str] = []
    stop = threading.Event()
    seen: list[Listed | Changed] = []
    for item in list_and_watch(kube, "pods", PODS, stop=stop,  # type: ignore[arg-type]
                               on_error=errors.append):
        seen.append(item)
        if len(seen) == 4:
            stop.set()
    assert [type(i).__name__ for i in seen] == ["Listed", "Changed", "Listed", "Changed"]
    assert isinstance(seen[0], Listed) and seen[0].resource_version == "10"
    assert isinstance(seen[2], Listed) and seen[2].resource_version == "50"
    assert isinstance(seen[3], Changed) and seen[3].type == "DELETED"
    assert [rv for _, rv in kube.watch_calls[:2]] == ["10", "50"]
    assert len(errors) == 1 and "410" in errors[0] and "too old" in errors[0], errors


def test_a_given_version_skips_the_first_list() -> None:
    kube = FakeKube({PODS: [listing("99")]},
                    watches={PODS: [[{"type": "MODIFIED", "object": pod("a", "10.0.0.1",
                                                                        rv="8")}]]})
    first = next(list_and_watch(kube, "pods", PODS,  # type: ignore[arg-type]
                                resource_version="7"))
    assert isinstance(first, Changed) and first.type == "MODIFIED"
    assert kube.gets == [] and kube.watch_calls == [(PODS, "7")]


def test_refusals_are_raised_not_retried() -> None:
    forbidden = ZsniffError("pods is forbidden: cannot watch", "", ExitStatus.FORBIDDEN)

    class Refusing(FakeKube):
        def watch(self, action: str, path: str, timeout: int, **query: Any) -> Any:
            raise forbidden

    kube = Refusing({PODS: [listing("1")]})
    with pytest.raises(ZsniffError) as caught:
        list(list_and_watch(kube, "pods", PODS))  # type: ignore[arg-type]
    assert caught.value.status == ExitStatus.FORBIDDEN
    # The first list cannot be done without: its failure is raised at once too.
    down = FakeKube({PODS: [ZsniffError("unreachable", "", ExitStatus.UNREACHABLE)]})
    with pytest.raises(ZsniffError):
        next(list_and_watch(down, "pods", PODS))  # type: ignore[arg-type]


def test_the_deadline_ends_the_loop() -> None:
    kube = FakeKube({PODS: [listing("1")]})
    started = time.monotonic()
    items = list(list_and_watch(kube, "pods", PODS,  # type: ignore[arg-type]
                                deadline=started + 0.3))
    assert [type(i) for i in items] == [Listed]
    assert time.monotonic() - started < 3


def _ephemeral(state: dict[str, Any], rv: str) -> dict[str, Any]:
    p = pod("web", "10.0.0.5", rv=rv)
    p["status"]["ephemeralContainerStatuses"] = [{"name": "zsniff-1", "state": state}]
    return p


def test_the_wait_survives_an_expired_watch_and_sees_the_container_run() -> None:
    waiting = _ephemeral({"waiting": {"reason": "ContainerCreating"}}, "5")
    kube = FakeKube({PODS: [listing("5", waiting), listing("9", waiting)]},
                    watches={PODS: [[EXPIRED], [{"type": "MODIFIED",
                                                  "object": _ephemeral({"running": {}}, "10")}]]})
    progress: list[str] = []
    wait_until_running(kube, "shop", "web", "zsniff-1", 10, progress.append)  # type: ignore[arg-type]
    assert progress == ["capture container waiting: ContainerCreating"]
    assert [rv for _, rv in kube.watch_calls] == ["5", "9"]


@pytest.mark.parametrize("state, status, words", [
    ({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}, ExitStatus.IMAGE_PULL,
     "cannot pull the capture image: ImagePullBackOff not found"),
    ({"terminated": {"exitCode": 127}}, ExitStatus.CAPTURE_FAILED,
     "stopped before the capture: exit code 127"),
])
def test_the_wait_ends_with_the_container_failure(state: dict[str, Any], status: ExitStatus,
                                                   words: str) -> None:
    kube = FakeKube({PODS: [listing("5", _ephemeral(state, "5"))]})
    with pytest.raises(ZsniffError) as caught:
        wait_until_running(kube, "shop", "web", "zsniff-1", 10, lambda _: None)  # type: ignore[arg-type]
    assert caught.value.status == status and words in caught.value.message


def test_the_wait_reports_a_vanished_pod_and_a_timeout() -> None:
    gone = FakeKube({PODS: [listing("5")]})
    with pytest.raises(ZsniffError) as caught:
        wait_until_running(gone, "shop", "web", "zsniff-1", 10, lambda _: None)  # type: ignore[arg-type]
    assert caught.value.status == ExitStatus.NOT_FOUND
    slow = FakeKube({PODS: [listing("5", _ephemeral({"waiting": {"reason": "ErrImagePull"}},
                                                      "5"))]})
    with pytest.raises(ZsniffError) as caught:
        wait_until_running(slow, "shop", "web", "zsniff-1", 0.5, lambda _: None)  # type: ignore[arg-type]
    assert caught.value.status == ExitStatus.START_TIMEOUT
    assert "(last state: ErrImagePull)" in caught.value.message
    assert "check --image" in caught.value.hint
