"""The oldest official client pyproject.toml accepts still works: its REST layer and its
Configuration differ from the newest (another code generator), and zsniff uses both.

A virtual environment that sees this interpreter's packages gets the lower-bound kubernetes
release installed over them; one whole capture then runs with it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.formats.pcapng import Interface, NameRecords, PacketRecord, read_capture
from tests.e2e.conftest import IMAGE
from tests.e2e.test_outputs import env_for, ping

REPO = Path(__file__).resolve().parents[2]


def lower_bound(package: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(rf'"{package}>=([0-9.]+)"', text)
    assert found, f"no lower bound for {package} in pyproject.toml"
    return found.group(1)


@pytest.fixture(scope="module")
def old_client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = lower_bound("kubernetes")
    venv = tmp_path_factory.mktemp("old-kubernetes")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"kubernetes=={version}"],
        capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"cannot install kubernetes=={version}: {pip.stderr.strip()[-300:]}")
    got = subprocess.run([str(python), "-c", "import kubernetes; print(kubernetes.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got.startswith(version), got
    return python


def test_capture_with_the_oldest_supported_official_client(
    old_client_python: Path, cluster: Any, kube_home: Path, tmp_path: Path
) -> None:
    cluster.create_pod("compat-web", command=["sleep", "3600"])
    cluster.create_pod("compat-client", command=["sleep", "3600"])
    try:
        web_ip = cluster.pod_ip("default", "compat-web")
        client_ip = cluster.pod_ip("default", "compat-client")
        out = tmp_path / "old.pcapng"
        proc = subprocess.Popen(
            [str(old_client_python), "-c",
             "import sys; sys.argv[0] = 'kubectl-zsniff'; "
             "from kubectl_zsniff.cli.app import main; main()",
             "compat-web", "-d", "6s", "-w", str(out), "--image", IMAGE, "icmp"],
            env=env_for(kube_home, cluster.kubeconfig), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "listening on" in line:
                break
        ping(cluster, "compat-client", web_ip)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        events = list(read_capture(str(out)))
        assert [e.name for e in events if isinstance(e, Interface)] == ["default/compat-web"]
        assert sum(isinstance(e, PacketRecord) for e in events) == 8  # 4 requests, 4 replies
        names = {ip: n for e in events if isinstance(e, NameRecords) for ip, n in e.records}
        assert names.get(client_ip) == ("default/compat-client",)  # listed through REST
    finally:
        cluster.delete_pod("compat-web")
        cluster.delete_pod("compat-client")
