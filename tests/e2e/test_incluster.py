"""Running inside a pod (a CI job, a debug pod): no kubeconfig, the service account's files and
the KUBERNETES_SERVICE_* variables, as the official client's in-cluster loader reads them.

The files live at fixed paths under /var/run/secrets, so the CLI runs in a private mount
namespace with a tmpfs there: the real paths, the real loader, nothing of the host touched.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from kubectl_zsniff.formats.pcapng import Interface, SectionStart, read_capture
from tests.e2e.conftest import IMAGE

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing"),
]

SECRETS = "/var/run/secrets/kubernetes.io/serviceaccount"
NAMESPACE = "kube-public"  # not "default": the service account's namespace file must count


def in_cluster_run(cluster: Any, tmp_path: Path, args: list[str],
                   token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a pod would run it: the cluster's server and CA and a bearer token (the
    admin's unless given) become the service account's files and variables."""
    config = json.loads(cluster.kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    token = token or cluster.admin_token()
    files = tmp_path / "serviceaccount"
    files.mkdir()
    (files / "token").write_text(token)
    (files / "namespace").write_text(NAMESPACE)
    (files / "ca.crt").write_bytes(
        base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
    home = tmp_path / "home"  # no ~/.kube/config: kubectl's order falls to in-cluster
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and k != "KUBECONFIG"}
    env.update(HOME=str(home), KUBERNETES_SERVICE_HOST=str(server.hostname),
               KUBERNETES_SERVICE_PORT=str(server.port))
    script = (
        'set -e; mkdir -p /var/run/secrets; mount -t tmpfs zsniff-sa /var/run/secrets; '
        f'mkdir -p {SECRETS}; cp "$1"/token "$1"/namespace "$1"/ca.crt {SECRETS}/; '
        'shift; exec "$@"'
    )
    argv = [sys.executable, "-c",
            "import sys; sys.argv[0] = 'kubectl-zsniff'; "
            "from kubectl_zsniff.cli.app import main; main()", *args]
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(files), *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_capture_from_inside_a_pod_with_the_service_account(
    cluster: Any, tmp_path: Path
) -> None:
    cluster.create_pod("incluster-web", namespace=NAMESPACE, command=["sleep", "3600"])
    try:
        out = tmp_path / "in.pcapng"
        result = in_cluster_run(
            cluster, tmp_path,
            ["incluster-web", "-d", "2s", "-w", str(out), "--image", IMAGE])
        assert result.returncode == 0, result.stderr
        assert "listening on eth0" in result.stderr
        events = list(read_capture(str(out)))
        interfaces = [e for e in events if isinstance(e, Interface)]
        assert [i.name for i in interfaces] == [f"{NAMESPACE}/incluster-web"]
        section = next(e for e in events if isinstance(e, SectionStart))
        assert "context in-cluster" in (section.comment or "")
        assert not Path(SECRETS, "token").exists()  # the host's own paths were not touched
    finally:
        cluster.delete_pod("incluster-web", namespace=NAMESPACE)


def test_in_cluster_with_a_wrong_token_is_unauthorized(cluster: Any, tmp_path: Path) -> None:
    result = in_cluster_run(cluster, tmp_path, ["some-pod", "-d", "1s", "-w",
                                                str(tmp_path / "x.pcapng")],
                            token="not-a-valid-token")
    assert result.returncode == 13, result.stderr
    assert result.stderr.startswith("error: ")
    assert "not-a-valid-token" not in result.stderr
