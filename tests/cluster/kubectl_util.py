"""Running real kubectl binaries against the test cluster (shared by the acceptance tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .handle import ClusterHandle, kubectl_binary

# kubectl <= 1.29 uses SPDY for exec/attach, which the cluster does not speak.
WEBSOCKET_VERSIONS = ["1.30", "1.31", "1.32", "1.33"]


def kube_env(cluster: ClusterHandle, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(home), KUBECONFIG=str(cluster.kubeconfig))
    return env


def kubectl(cluster: ClusterHandle, home: Path, version: str, *args: str,
            timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[Any]:
    kw.setdefault("capture_output", True)
    if "input" not in kw and "stdin" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run([str(kubectl_binary(version)), *args], env=kube_env(cluster, home),
                          timeout=timeout, **kw)


def kubectl_popen(cluster: ClusterHandle, home: Path, version: str, *args: str,
                  **kw: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen([str(kubectl_binary(version)), *args],
                            env=kube_env(cluster, home), **kw)
