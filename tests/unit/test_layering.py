"""Import checks on the source (ast, not runtime hooks): the pure layers stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kubectl_zsniff"
FORMATS = sorted((PACKAGE / "formats").glob("*.py"))
# What formats/ must never reach: the cluster, the wire, the command line, the outputs, the run.
FORBIDDEN = ("kube", "execws", "websocket", "wire", "cli", "sinks", "session", "capture")


def imported_modules(path: Path, package: list[str] | None = None,
                     runtime_only: bool = False) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved); with
    ``runtime_only``, not those under ``if TYPE_CHECKING:`` (annotations only)."""
    if package is None:
        package = ["kubectl_zsniff", *path.parent.relative_to(PACKAGE).parts]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    names: list[str] = []
    for node in ast.walk(tree):
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


# --- the other pure layers, the command line's monopoly on the terminal ------------------------

MODULES = sorted(PACKAGE.rglob("*.py"))
CLI = PACKAGE / "cli"
PURE_PACKAGES = ("formats", "names", "zeek")
# What the pure layers must never reach: the cluster, the wire, the command line, the outputs.
PURE_FORBIDDEN = ("kube", "wire", "cli", "sinks", "capture", "pipeline")


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize(
    "path", [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in PURE_PACKAGES], ids=_rel)
def test_names_and_zeek_import_nothing_from_cluster_wire_cli_or_sinks(path: Path) -> None:
    bad = [name for name in imported_modules(path) for part in PURE_FORBIDDEN
           if _in(name, f"kubectl_zsniff.{part}")]
    assert not bad, f"{_rel(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if CLI not in p.parents], ids=_rel)
def test_only_the_command_line_imports_click_or_a_rich_console(path: Path) -> None:
    bad = [name for name in imported_modules(path, runtime_only=True)
           if _in(name, "click") or _in(name, "rich.console") or name == "rich.Console"]
    assert not bad, f"{_rel(path)} imports {bad}"


def terminal_writes(path: Path) -> list[str]:
    """`print(...)` calls and uses of sys.stdout, sys.stderr, sys.stdin, with their lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id == "print"):
            found.append(f"{node.lineno}: print()")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "sys" and node.attr in ("stdout", "stderr", "stdin")):
            found.append(f"{node.lineno}: sys.{node.attr}")
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if CLI not in p.parents], ids=_rel)
def test_the_core_never_touches_the_terminal_itself(path: Path) -> None:
    assert terminal_writes(path) == [], f"{_rel(path)} reaches for the terminal"


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport click\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from rich.text import Text\n"
                   "from rich.console import Console\n"
                   "print('x')\nsys.stderr.write('y')\n")
    assert terminal_writes(bad) == ["7: print()", "8: sys.stderr"]
    names = imported_modules(bad, ["kubectl_zsniff"], runtime_only=True)
    assert "click" in names and "rich.console" in names and "rich.text" not in names
    # The command line is where they belong, and is seen there.
    assert terminal_writes(CLI / "app.py") and "click" in imported_modules(
        CLI / "app.py", runtime_only=True)


# --- the seams between the pipeline, the sinks and the console are typed -----------------------

SEAMS = sorted((PACKAGE / "pipeline").glob("*.py")) + [CLI / "console.py",
                                                       PACKAGE / "capture" / "session.py"]


def attribute_probes(path: Path) -> list[str]:
    """getattr()/hasattr() calls and `Any` names, with their lines: a seam guessed, not typed."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id in ("getattr", "hasattr")):
            found.append(f"{node.lineno}: {node.func.id}()")
        if isinstance(node, ast.Name) and node.id == "Any":
            found.append(f"{node.lineno}: Any")
    return found


@pytest.mark.parametrize("path", SEAMS, ids=_rel)
def test_the_pipeline_console_and_session_use_the_sinks_typed_contract(path: Path) -> None:
    assert attribute_probes(path) == [], f"{_rel(path)} guesses at an object it is handed"


SINK_MODULES = [p for p in sorted((PACKAGE / "sinks").glob("*.py"))
                if p.name not in ("__init__.py", "results.py")]


def sink_classes(path: Path) -> list[tuple[str, list[str]]]:
    """(class, its bases) of every class whose name ends in Sink."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [(node.name, [ast.unparse(base) for base in node.bases])
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.name.endswith("Sink")]


def test_every_sink_keeps_the_one_contract() -> None:
    found = {name: bases for path in SINK_MODULES for name, bases in sink_classes(path)}
    assert set(found) >= {"FileSink", "StdoutSink", "RotatingFileSink", "WiresharkSink",
                          "ZeekSink", "ViewSink"}, found
    assert all(bases == ["Sink"] for bases in found.values()), found


def test_the_seam_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import Any\nx: Any = 1\nif hasattr(x, 'y'):\n"
                   "    getattr(x, 'y')()\n")
    assert attribute_probes(bad) == ["2: Any", "3: hasattr()", "4: getattr()"]
