"""The captured pod is deleted mid-capture: a clear message, its own status, a valid file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from kubectl_zsniff.formats.pcapng import read_capture
from tests.e2e.conftest import IMAGE, ZSNIFF, classify, load
from tests.e2e.test_outputs import env_for, needs_ping, ping, wait_for_listening

pytestmark = needs_ping


def test_pod_deleted_during_capture(cluster: Any, kube_home: Path, tmp_path: Path) -> None:
    cluster.create_pod("gone-soon", command=["sleep", "3600"])
    cluster.create_pod("gone-client", command=["sleep", "3600"])
    web_ip = cluster.pod_ip("default", "gone-soon")
    client_ip = cluster.pod_ip("default", "gone-client")
    out = tmp_path / "gone.pcapng"
    proc = subprocess.Popen(
        [*ZSNIFF, "gone-soon", "-w", str(out), "--image", IMAGE],
        env=env_for(kube_home, cluster.kubeconfig), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    wait_for_listening(proc.stderr)
    ping(cluster, "gone-client", web_ip)  # 4 echoes and 4 replies before the pod goes
    cluster.delete_pod("gone-soon")
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 4, err
    assert 'pod "default/gone-soon" went away during the capture' in err
    assert "hint:" in err and "Traceback" not in err
    list(read_capture(str(out), allow_truncated=False))  # whole blocks only
    cluster.delete_pod("gone-client")
    # The file keeps what was captured before the pod went: every echo, under the pod's name.
    cap = load(out)
    echoes = [p for p in cap.packets
              if classify(p.data) in (("icmp", client_ip, web_ip), ("icmp", web_ip, client_ip))]
    assert len(echoes) == 8, f"{len(echoes)} of the 8 echo packets in the file"
    assert [i.name for i in cap.interfaces] == ["default/gone-soon"]
    assert cap.names.get(client_ip) == "default/gone-client"



