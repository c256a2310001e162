"""Shared fixtures: the local test cluster (session-scoped) and a fresh HOME for kubectl."""

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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running cluster in a temporary state dir; torn down and checked for leftovers."""
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
