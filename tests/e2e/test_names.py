"""Names stay true during a capture: pods that appear, and addresses that change owner.

Real CLI, real pods (network namespaces) on the local test cluster, real ping traffic, and real
tshark reading the file in one pass (as `tshark -r` and a live Wireshark do).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import IMAGE, ZSNIFF
from tests.e2e.test_outputs import env_for

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def start_capture(cluster: Any, home: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    env = env_for(home, cluster.kubeconfig)
    proc = subprocess.Popen(
        [*ZSNIFF, *args, "-w", str(out), "--image", IMAGE],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            break
        if not line and proc.poll() is not None:
            pytest.fail(f"capture ended early: {proc.returncode}")
    return proc


def ping(cluster: Any, ns: str, pod: str, target: str, count: int = 3) -> None:
    proc = cluster.run_in_pod(ns, pod, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait(timeout=30)


def finish(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(2)  # Ctrl-C: the normal way to end a capture
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return err


def icmp_requests(path: Path) -> list[tuple[str, str, str, str]]:
    """(src address, src name, dst name, comment) of each echo request, in file order."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-N", "n", "-Y", "icmp.type == 8", "-T", "fields",
         "-e", "ip.src", "-e", "ip.src_host", "-e", "ip.dst_host", "-e", "frame.comment"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [tuple((line.split("\t") + [""] * 4)[:4]) for line in out.splitlines()]  # type: ignore[misc]


@pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) not installed")
def test_pod_created_during_capture_is_named(cluster: Any, kube_home: Path,
                                             tmp_path: Path) -> None:
    cluster.create_pod("names-web", command=["sleep", "3600"])
    web_ip = cluster.pod_ip("default", "names-web")
    out = tmp_path / "new.pcapng"
    capture = start_capture(cluster, kube_home, out, "names-web", "icmp")
    try:
        cluster.create_pod("names-newcomer", command=["sleep", "3600"])
        ping(cluster, "default", "names-newcomer", web_ip)
    finally:
        finish(capture)
        cluster.delete_pod("names-newcomer")
    rows = icmp_requests(out)
    assert rows, "no echo request captured"
    assert {(src_name, dst_name) for _, src_name, dst_name, _ in rows} == {
        ("default/names-newcomer", "default/names-web")
    }


@pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) not installed")
def test_reused_address_names_each_packet_by_its_owner_then(cluster: Any, kube_home: Path,
                                                            tmp_path: Path) -> None:
    cluster.create_pod("reuse-web", command=["sleep", "3600"])
    cluster.create_pod("reuse-old", command=["sleep", "3600"])
    web_ip = cluster.pod_ip("default", "reuse-web")
    old_ip = cluster.pod_ip("default", "reuse-old")
    out = tmp_path / "reuse.pcapng"
    capture = start_capture(cluster, kube_home, out, "reuse-web", "icmp")
    try:
        ping(cluster, "default", "reuse-old", web_ip)
        cluster.delete_pod("reuse-old")
        # A busy node hands a freed address to a later pod; the test makes it the next one
        # (the double does by itself, host-local on the real cluster is steered).
        cluster.steer_next_ip(old_ip)
        cluster.create_pod("reuse-heir", command=["sleep", "3600"])
        assert cluster.pod_ip("default", "reuse-heir") == old_ip
        ping(cluster, "default", "reuse-heir", web_ip)
    finally:
        finish(capture)
        cluster.delete_pod("reuse-heir")
    rows = [r for r in icmp_requests(out) if r[0] == old_ip]
    names = [src_name for _, src_name, _, _ in rows]
    assert names[:3] == ["default/reuse-old"] * 3
    assert names[-3:] == ["default/reuse-heir"] * 3
    # For two-pass readers (Wireshark opening the file) the owner at capture time is a comment.
    assert all(f"{old_ip} was default/reuse-heir" in comment for *_, comment in rows[-3:])
    assert all(comment == "" for *_, comment in rows[:3])
