"""Writes the consumer module that builds another Kubernetes release outside its repository.

``python tests/realcluster/gomod/new_version.py v1.35.4`` makes ``kubernetes-v1.35.4/``: a
go.mod that requires ``k8s.io/kubernetes`` at that version and replaces each staging module
it names (``k8s.io/X => ./staging/...``) with the published ``v0.MINOR.PATCH`` release, and a
tools.go naming the commands; then ``go mod tidy`` fills in go.sum. Set the version in
tests/realcluster/build.py (or ZSNIFF_KUBERNETES_VERSION) to use it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet")


def main(version: str) -> int:
    info = json.loads(subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        capture_output=True, text=True, check=True).stdout)
    upstream = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging", upstream, re.M)))
    go_line = re.search(r"^go (\S+)", upstream, re.M)
    godebug = re.search(r"^godebug .*$", upstream, re.M)
    release = "v0." + version.split(".", 1)[1]
    out = HERE / f"kubernetes-{version}"
    out.mkdir(exist_ok=True)
    lines = [
        f"// Consumer module that builds Kubernetes {version} outside its repository: the",
        "// kubernetes module replaces its staging modules with ./staging paths, so each is",
        f"// pinned here to its published {release} release. Made by "
        "tests/realcluster/gomod/new_version.py.",
        "module zsniff.test/kubernetes", "",
        f"go {go_line.group(1) if go_line else '1.24.0'}", "",
        *([godebug.group(0), ""] if godebug else []),
        f"require k8s.io/kubernetes {version}", "", "replace (",
        *(f"\t{module} => {module} {release}" for module in staging), ")", ""]
    (out / "go.mod").write_text("\n".join(lines))
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in COMMANDS)
    (out / "tools.go").write_text(
        "//go:build tools\n\n// Package tools names the commands the test cluster builds, so "
        "that go.mod and go.sum\n// hold everything they need.\npackage tools\n\nimport (\n"
        f"{imports}\n)\n")
    subprocess.run(["go", "mod", "tidy"], cwd=out, check=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
