"""The captured pod is deleted mid-capture: a clear message, its own status, a valid file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from kubectl_zsniff.pcapng import read_capture
from tests.e2e.test_outputs import ZSNIFF, env_for, wait_for_listening


def test_pod_deleted_during_capture(cluster: Any, kube_home: Path, tmp_path: Path) -> None:
    cluster.create_pod("gone-soon", command=["sleep", "3600"])
    out = tmp_path / "gone.pcapng"
    proc = subprocess.Popen(
        [*ZSNIFF, "gone-soon", "-w", str(out), "--image", "busybox"],
        env=env_for(kube_home, cluster.kubeconfig), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    wait_for_listening(proc.stderr)
    cluster.delete_pod("gone-soon")
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 4, err
    assert 'pod "default/gone-soon" went away during the capture' in err
    assert "hint:" in err and "Traceback" not in err
    list(read_capture(str(out), allow_truncated=False))  # whole blocks only
