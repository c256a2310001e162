"""Shared fixtures: the clusters (session-scoped) and a fresh HOME for kubectl.

``cluster`` is the test double (tests/cluster) or the real Kubernetes (tests/realcluster):
every test that uses it, directly or through another fixture, runs on both, except tests
under tests/cluster (about the double itself), tests under tests/realcluster (real only) and
tests marked ``double_only`` (they need a fault the real cluster cannot make on demand) and
tests marked ``real_only`` (what only a real Kubernetes can show).
Where the real cluster cannot run here its tests skip with the reason; under CI=true that is a
failure, so that CI never passes without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _netns_unusable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the local test cluster needs root (network namespaces, nsenter, setpriv)"
    for tool in ("ip", "nsenter", "setpriv", "openssl"):
        if shutil.which(tool) is None:
            return f"the local test cluster needs `{tool}` on PATH"
    probe = f"zstprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` does not work here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


CLUSTER_KINDS = ("double", "real")
# kubelet's and containerd's stream idle timeout on the tests' real cluster: short, so that a
# test can show what a quiet capture meets on a hardened cluster (5 min there, 4 h by default).
REAL_STREAM_IDLE_TIMEOUT = "30s"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cluster_kind" not in metafunc.fixturenames:
        return
    path = str(metafunc.definition.path)
    if "/tests/cluster/" in path:
        kinds: tuple[str, ...] = ("double",)
    elif "/tests/realcluster/" in path:
        kinds = ("real",)
    else:
        kinds = CLUSTER_KINDS
    metafunc.parametrize("cluster_kind", kinds, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the runs a test's (or a parameter's) double_only / real_only mark rules out."""
    def unwanted(item: pytest.Item) -> bool:
        kind = getattr(item, "callspec", None) and item.callspec.params.get("cluster_kind")
        return (kind == "real" and item.get_closest_marker("double_only") is not None) or (
            kind == "double" and item.get_closest_marker("real_only") is not None)

    dropped = [item for item in items if unwanted(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not unwanted(item)]


@pytest.fixture(scope="session")
def cluster_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def cluster(cluster_kind: str, request: pytest.FixtureRequest) -> object:
    """The cluster this test runs on: the double or the real one."""
    return request.getfixturevalue(f"{cluster_kind}_cluster")


def _real_cluster_unusable_reason() -> str | None:
    from tests.realcluster.cluster import missing_reason

    return missing_reason()


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real single-node Kubernetes, up for the session; afterwards nothing of it may be
    left on the host: no process, cgroup, mount, link or file."""
    reason = _real_cluster_unusable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the real cluster must run in CI: {reason}")
        pytest.skip(reason)
    from tests.realcluster import cluster as real
    from tests.realcluster import node
    from tests.realcluster.handle import RealClusterHandle

    links_before = _host_links()
    state = tmp_path_factory.mktemp("zsniff-real")
    try:
        real.up(state, stream_idle_timeout=REAL_STREAM_IDLE_TIMEOUT)
    except real.ClusterError as err:
        real.down(state)
        pytest.fail(f"the real cluster did not come up: {err}")
    handle = RealClusterHandle(state)
    try:
        yield handle
    finally:
        down_started = time.time()
        problems = real.down(state)
        assert not problems, problems

        def left_of_the_node() -> set[int]:
            return {p for p in node.node_pids(handle.record, handle.prefix)
                    if node.started_before(p, down_started)}

        # A process SIGKILLed by down() is gone only once it is reaped: give that a moment
        # (a check at once saw one that had exited by the time anyone looked).
        deadline = time.monotonic() + 5
        while left_of_the_node() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = left_of_the_node()
        assert not left, f"node processes left behind: {_describe(left)}"
        assert not list(node._cgroup_dirs(handle.prefix)), "cgroups left behind"
        assert not state.exists(), f"{state} left behind"
        assert _host_links() == links_before, "the host's links changed"
        # Every mount of the node was made in its private mount namespace: the host's table
        # (which other clusters of the session change meanwhile) has none of them.
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(state) not in mounts and "zsniff-run" not in mounts, "a mount was left"


def _host_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted(line.split(":", 2)[1].strip() for line in out.splitlines() if ":" in line)


@pytest.fixture(scope="session")
def double_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The test double in a temporary state dir; torn down and checked for leftovers."""
    reason = _netns_unusable_reason()
    if reason:
        pytest.skip(reason)
    from tests.cluster import __main__ as ctl
    from tests.cluster import runtime
    from tests.cluster.handle import ClusterHandle

    state = tmp_path_factory.mktemp("zsniff-cluster")
    ctl.up(state)
    handle = ClusterHandle(state)
    try:
        yield handle
    finally:
        names = runtime.netns_list(handle.prefix)
        inodes = {i for i in (runtime.netns_inode(n) for n in names) if i is not None}
        ctl.down(state)
        left_ns = runtime.netns_list(handle.prefix)
        # SIGKILLed processes may take a moment to leave their netns: poll briefly.
        deadline = time.monotonic() + 5
        left_procs = runtime.pids_in_netns(inodes) if inodes else []
        while left_procs and time.monotonic() < deadline:
            time.sleep(0.1)
            left_procs = runtime.pids_in_netns(inodes)
        left_desc = [(p, runtime.proc_stat(p)) for p in left_procs]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                               text=True).stdout
        left_links = [ln for ln in links.splitlines() if handle.prefix in ln]
        server_alive = ctl._alive(handle.server_pid)
        assert not left_ns, f"netns left behind: {left_ns}"
        assert not left_procs, f"processes left behind: {left_desc}"
        assert not left_links, f"links left behind: {left_links}"
        assert not server_alive, "cluster server still running"


@pytest.fixture
def kube_home(tmp_path: Path) -> Path:
    """A fresh HOME: kubectl caches discovery under $HOME/.kube/cache."""
    home = tmp_path / "home"
    home.mkdir()
    return home


def _describe(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            out.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}")
        except OSError:
            out.append(f"{pid} (gone)")
    return out
