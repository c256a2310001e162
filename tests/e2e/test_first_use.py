"""What a new user hit (issue 9): each defect as the user met it, through the real CLI of this
checkout against the test cluster."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    ZSNIFF,
    Zsniff,
    assert_clean_error,
    assert_no_capture_left,
    unique,
    zsniff_env,
)

CLOSE_STDOUT = ["/bin/sh", "-c", 'exec "$@" >&-', "sh"]


def test_this_checkouts_cli_is_the_one_tested(zsniff: Zsniff) -> None:
    """The e2e subprocess imports kubectl_zsniff from this worktree, not an editable install."""
    code = "import kubectl_zsniff; print(kubectl_zsniff.__file__)"
    out = subprocess.run([ZSNIFF[0], "-c", code], env=zsniff_env(zsniff.home),
                         capture_output=True, text=True, timeout=30, cwd="/")
    here = Path(__file__).resolve().parents[2]
    assert Path(out.stdout.strip()).resolve().is_relative_to(here), out.stdout


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _device(path: Path, minor: int) -> Path:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    path.chmod(0o666)
    return path


@needs_root
def test_output_onto_a_device_keeps_the_device(
        zsniff: Zsniff, fresh_pod: str, tmp_path: Path, cluster: Any) -> None:
    """Defect 11: `-w` onto a full device removed the node; onto a null device made it 0600."""
    full = _device(tmp_path / "x", 7)
    result = zsniff.run([fresh_pod, "-w", str(full), "-d", "1s"])
    assert_clean_error(result, 16, "No space left on device")
    assert stat.S_ISCHR(full.stat().st_mode), "the device node was removed"
    assert stat.S_IMODE(full.stat().st_mode) == 0o666
    null = _device(tmp_path / "y", 3)
    result = zsniff.run([fresh_pod, "-w", str(null), "-d", "1s"])
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(null.stat().st_mode)
    assert stat.S_IMODE(null.stat().st_mode) == 0o666, "the device's mode was changed"
    assert_no_capture_left(cluster, "default", fresh_pod)


def test_existing_file_keeps_its_mode(zsniff: Zsniff, fresh_pod: str, tmp_path: Path) -> None:
    out = tmp_path / "shared.pcapng"
    out.write_bytes(b"")
    out.chmod(0o640)
    result = zsniff.run([fresh_pod, "-w", str(out), "-d", "1s"])
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert out.stat().st_size > 0  # the header at least: it was written, not removed


def test_closed_stdout_is_an_output_error(zsniff: Zsniff, fresh_pod: str) -> None:
    """Defect 8: `-w - >&-` ended in an AttributeError (exit 1)."""
    result = zsniff.run([fresh_pod, "-w", "-", "-d", "1s"], wrap=CLOSE_STDOUT, stdout=None)
    assert_clean_error(result, 16, "standard output is closed")


def test_view_refuses_a_file_that_is_not_a_capture(zsniff: Zsniff, tmp_path: Path) -> None:
    """Defect 9: one bogus `? → ?` row and exit 0, where `convert` rejects the same file."""
    text = tmp_path / "notacapture.txt"
    text.write_text("hello, this is not a capture\n" * 20)
    result = subprocess.run([*ZSNIFF, "view", str(text)], capture_output=True, text=True,
                            timeout=60, env=zsniff_env(zsniff.home))
    assert_clean_error(result, 2, "not a pcap or pcapng capture", "notacapture.txt")
    assert result.stdout == ""


def test_kubeconfig_list_skips_missing_entries(
        zsniff: Zsniff, fresh_pod: str, tmp_path: Path) -> None:
    """Defect 5: KUBECONFIG=/missing:/good was refused; kubectl skips the missing entry."""
    env = zsniff_env(zsniff.home)  # drops any KUBECONFIG of the caller's
    env["KUBECONFIG"] = f"{tmp_path / 'missing'}:{zsniff.kubeconfig}"
    out = tmp_path / "c.pcapng"
    result = subprocess.run([*ZSNIFF, fresh_pod, "--image", zsniff.image, "-d", "1s", "-w",
                             str(out)], capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    env["KUBECONFIG"] = f"{tmp_path / 'missing'}:{tmp_path / 'missing2'}"
    result = subprocess.run([*ZSNIFF, fresh_pod, "-w", str(tmp_path / "d.pcapng")],
                            capture_output=True, text=True, timeout=90, env=env)
    assert_clean_error(result, 2, "KUBECONFIG", "missing2")


RESTRICTED_OK = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _ephemeral(cluster: Any, namespace: str, pod: str) -> list[str]:
    spec = cluster.get_pod(pod, namespace)["spec"]
    return [c["name"] for c in spec.get("ephemeralContainers") or ()]


def test_selector_reaching_a_restricted_pod_changes_no_pod(
        zsniff: Zsniff, cluster: Any, tmp_path: Path) -> None:
    """Defect 2: the other matching pods got capture containers, then exit 6. Now the
    refusal comes before any pod is changed, and --skip-uncapturable captures the others."""
    app = unique("mixed")
    ok = unique("mixed-ok")
    locked = unique("mixed-locked")
    cluster.create_pod(ok, labels={"app": app})
    cluster.create_pod(locked, "restricted", labels={"app": app},
                       security_context=RESTRICTED_OK)
    out = tmp_path / "mixed.pcapng"
    try:
        result = zsniff.run(["-A", "-l", f"app={app}", "-d", "1s", "-w", str(out)])
        assert _ephemeral(cluster, "default", ok) == [], "a pod was changed before the refusal"
        assert_clean_error(result, 6, "restricted", f"restricted/{locked}", "no pod was changed")
        assert "--skip-uncapturable" in result.stderr
        assert not out.exists()

        result = zsniff.run(["-A", "-l", f"app={app}", "-d", "1s", "-w", str(out),
                             "--skip-uncapturable"])
        assert result.returncode == 0, result.stderr
        assert f"skipping restricted/{locked}" in result.stderr
        assert f"default/{ok}" in result.stderr
        assert len(_ephemeral(cluster, "default", ok)) == 1
        assert _ephemeral(cluster, "restricted", locked) == []
        assert out.stat().st_size > 0
        assert_no_capture_left(cluster, "default", ok)
    finally:
        cluster.delete_pod(ok)
        cluster.delete_pod(locked, "restricted")
