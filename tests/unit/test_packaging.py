"""Packaging: the console script, the krew archive and manifest, --help speed."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging" / "krew"))
import build as krew_build  # noqa: E402


def test_krew_archive_is_reproducible_and_matches_the_manifest() -> None:
    version = krew_build.version()
    first = krew_build.archive_bytes(version)
    assert first == krew_build.archive_bytes(version)
    manifest = (ROOT / "krew-manifest.yaml").read_text()
    assert f"version: v{version}" in manifest
    # The committed manifest names the archive this tree builds: rebuild both after a change.
    assert f"sha256: {hashlib.sha256(first).hexdigest()}" in manifest
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        launcher = tar.getmember("kubectl-zsniff")
        assert launcher.mode & 0o111
        text = tar.extractfile(launcher).read().decode()  # type: ignore[union-attr]
    assert f'VERSION="{version}"' in text


@pytest.mark.skipif(os.environ.get("ZSNIFF_SKIP_SLOW") == "1", reason="slow test disabled")
def test_krew_launcher_installs_into_a_private_venv_and_runs(tmp_path: Path) -> None:
    version = krew_build.version()
    launcher = tmp_path / "kubectl-zsniff"
    launcher.write_text(
        (ROOT / "packaging" / "krew" / "kubectl-zsniff").read_text().replace("__VERSION__", version)
    )
    launcher.chmod(0o755)
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"), ZSNIFF_PIP_SPEC=str(ROOT),
               ZSNIFF_PYTHON=sys.executable, PIP_NO_INPUT="1")
    first = subprocess.run([str(launcher), "--version"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"kubectl-zsniff {version}"
    assert (tmp_path / "data" / "kubectl-zsniff" / version / "bin" / "kubectl-zsniff").exists()
    again = subprocess.run([str(launcher), "--version"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "installing" not in again.stderr


# The product's target is 0.2 s. Measured: the fastest of five runs, and what zsniff adds to
# a bare interpreter's start (so a loaded, shared machine slows both sides). Here --help takes
# 0.15-0.3 s (0.05-0.2 s over the bare start); with the kubernetes client and rich imported
# eagerly, 0.5-1.1 s (0.4 s and more over it).
def test_console_script_help_shows_examples_without_the_slow_imports() -> None:
    """--help starts fast because it imports none of the heavy packages: that is what is
    asserted here; its time is measured by bench/bench_help.py (timings never fail tests)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'kubectl-zsniff'; "
                             "from kubectl_zsniff.cli.app import main; main()", "--help"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Examples:" in out and "--wireshark" in out
    assert "--version" in out and "--force" in out and "--via-node" in out  # every flag
    # --help must not import the kubernetes client, rich or pyshark (each costs 0.3-0.5 s).
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from kubectl_zsniff.cli import app as cli\n"
         "try:\n    cli.cli(['--help'], standalone_mode=False)\nexcept SystemExit: pass\n"
         "print(sorted(m for m in ('kubernetes','rich','pyshark','websockets') "
         "if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip().splitlines()[-1] == "[]"


def test_version_and_bad_flags_exit_with_usage_status() -> None:
    exe = shutil.which("kubectl-zsniff")
    if exe is None:
        pytest.skip("kubectl-zsniff is not installed (pip install -e .)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("kubectl-zsniff ")
    bad = subprocess.run([exe, "web", "--count", "zero"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "--count" in bad.stderr
