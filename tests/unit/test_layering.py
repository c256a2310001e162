"""Import checks on the source (ast, not runtime hooks): the pure layers stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kubectl_zsniff"
FORMATS = sorted((PACKAGE / "formats").glob("*.py"))
# What formats/ must never reach: the cluster, the wire, the command line, the outputs, the run.
FORBIDDEN = ("kube", "execws", "websocket", "wire", "cli", "sinks", "session", "capture")


def imported_modules(path: Path, package: list[str] | None = None) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    if package is None:
        package = ["kubectl_zsniff", *path.parent.relative_to(PACKAGE).parts]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.append(module)
            # `from . import x` imports the module x itself.
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_formats_package_has_modules() -> None:
    assert {p.name for p in FORMATS} >= {"__init__.py", "detect.py", "pcap.py", "pcapng.py"}


@pytest.mark.parametrize("path", FORMATS, ids=lambda p: p.name)
def test_formats_import_nothing_from_cluster_wire_cli_or_sinks(path: Path) -> None:
    bad = [
        name
        for name in imported_modules(path)
        for part in FORBIDDEN
        if name == f"kubectl_zsniff.{part}" or name.startswith(f"kubectl_zsniff.{part}.")
    ]
    assert not bad, f"{path.name} imports {bad}"


def test_the_check_sees_relative_imports(tmp_path: Path) -> None:
    names = imported_modules(PACKAGE / "formats" / "pcap.py")
    assert "kubectl_zsniff.errors" in names  # `from ..errors import ZsniffError`
    assert "kubectl_zsniff.formats.detect" in names  # `from .detect import ...`
    bad = tmp_path / "bad.py"
    bad.write_text("from .. import sinks\nfrom ..kube import Client\nimport kubectl_zsniff.cli\n")
    assert imported_modules(bad, ["kubectl_zsniff", "formats"]) == [
        "kubectl_zsniff",
        "kubectl_zsniff.sinks",
        "kubectl_zsniff.kube",
        "kubectl_zsniff.kube.Client",
        "kubectl_zsniff.cli",
    ]
