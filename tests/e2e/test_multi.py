"""Several pods in one capture file: one named interface per pod, names on every packet,
every tcpdump stopped at the end."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.formats.pcapng import Interface, PacketRecord, read_capture
from tests.e2e.conftest import IMAGE
from tests.e2e.test_outputs import ZSNIFF, env_for, ping, wait_for_listening

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
    pytest.mark.skipif(shutil.which("ping") is None, reason="ping not installed"),
]


def test_selector_captures_every_matching_pod_into_one_pcapng(
    cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    for name in ("multi-a", "multi-b"):
        cluster.create_pod(name, command=["sleep", "3600"], labels={"app": "multi"})
    cluster.create_pod("multi-client", command=["sleep", "3600"])
    ips = {name: cluster.pod_ip("default", name) for name in ("multi-a", "multi-b")}
    out = tmp_path / "multi.pcapng"
    proc = subprocess.Popen(
        [*ZSNIFF, "-l", "app=multi", "-w", str(out), "--image", IMAGE, "icmp"],
        env=env_for(kube_home, cluster.kubeconfig), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    wait_for_listening(proc.stderr)
    wait_for_listening(proc.stderr)  # one "listening" line per pod
    ping(cluster, "multi-client", ips["multi-a"])
    ping(cluster, "multi-client", ips["multi-b"])
    time.sleep(0.5)
    proc.send_signal(2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "tcpdump stopped in the pods (verified)" in err

    events = list(read_capture(str(out)))
    interfaces = {e.id: e for e in events if isinstance(e, Interface)}
    assert sorted(i.name or "" for i in interfaces.values()) == [
        "default/multi-a", "default/multi-b"
    ]
    per_interface: dict[str, int] = {}
    for event in events:
        if isinstance(event, PacketRecord):
            name = interfaces[event.interface_id].name or ""
            per_interface[name] = per_interface.get(name, 0) + 1
    assert per_interface == {"default/multi-a": 8, "default/multi-b": 8}

    rows = subprocess.run(
        ["tshark", "-r", str(out), "-N", "n", "-T", "fields", "-e", "frame.interface_name",
         "-e", "ip.src_host", "-e", "ip.dst_host"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    for row in rows:
        interface, src, dst = row.split("\t")
        # Each pod's interface carries its own traffic with the client, by name.
        assert {src, dst} == {interface, "default/multi-client"}
    for name in ("multi-a", "multi-b"):
        deadline = time.monotonic() + 10
        while any("tcpdump" in " ".join(p.argv) for p in cluster.processes("default", name)):
            assert time.monotonic() < deadline, f"tcpdump left running in {name}"
            time.sleep(0.2)
    for name in ("multi-a", "multi-b", "multi-client"):
        cluster.delete_pod(name)


def test_no_pod_matches_the_selector(cluster: Any, kube_home: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [*ZSNIFF, "-l", "app=nobody-has-this", "-w", str(tmp_path / "x.pcapng")],
        env=env_for(kube_home, cluster.kubeconfig), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    assert 'no running pod matches the selector "app=nobody-has-this"' in result.stderr
    assert "hint:" in result.stderr
    assert not (tmp_path / "x.pcapng").exists()
