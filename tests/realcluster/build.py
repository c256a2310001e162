"""Builds the real cluster's binaries from the Go module proxy, once per version, into a cache.

Kubernetes is built from the ``k8s.io/kubernetes`` module through the consumer module in
``gomod/kubernetes-VERSION`` (its go.mod pins every staging module to the matching release);
etcd likewise from ``gomod/etcd-VERSION``. The binaries land in
``~/.cache/kubectl-zsniff/kubernetes-VERSION/`` (``$ZSNIFF_CACHE`` overrides the cache root); a
second call finds them there and costs nothing. ``python -m tests.realcluster build`` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOMOD = HERE / "gomod"

# The one place the versions are set: a second Kubernetes version is a new consumer module
# (gomod/new_version.py) and a new entry here.
KUBERNETES_VERSION = os.environ.get("ZSNIFF_KUBERNETES_VERSION", "v1.34.4")
ETCD_VERSION = "v3.6.16"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                 "kubectl")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    directory: Path
    version: str

    def __getitem__(self, name: str) -> str:
        return str(self.directory / name)


def cache_root() -> Path:
    return Path(os.environ.get("ZSNIFF_CACHE", Path.home() / ".cache" / "kubectl-zsniff"))


def go_missing_reason() -> str | None:
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        return "building the real cluster needs Go (go on PATH or /usr/local/go/bin/go)"
    return None


def _go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def version_ldflags(version: str) -> str:
    """What `kubectl version` and `/version` report: Kubernetes' own release ldflags."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.gitVersion={version}", f"-X {package}.gitMajor={major}",
                  f"-X {package}.gitMinor={minor}",
                  f"-X {package}.gitCommit=0000000000000000000000000000000000000000",
                  f"-X {package}.gitTreeState=clean",
                  f"-X {package}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def _go_build(module_dir: Path, out: Path, packages: list[str], ldflags: str,
              log: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    env.setdefault("GOTOOLCHAIN", "local")
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as logf:
        proc = subprocess.run([_go(), "build", "-trimpath", "-ldflags", ldflags, "-o",
                               f"{tmp}/", *packages], cwd=module_dir, env=env,
                              stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BuildError(f"go build in {module_dir} failed (exit {proc.returncode}); see {log}")
    for binary in tmp.iterdir():
        binary.replace(out / binary.name)
    tmp.rmdir()


def binaries_dir() -> Path:
    return cache_root() / f"kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def binaries_cached() -> bool:
    return all((binaries_dir() / c).exists() for c in (*KUBE_COMMANDS, "etcd"))


def ensure_binaries(log: Path | None = None) -> Binaries:
    """The cached binaries of KUBERNETES_VERSION and ETCD_VERSION, built first if missing."""
    reason = go_missing_reason()
    directory = binaries_dir()
    directory.mkdir(parents=True, exist_ok=True)
    log = log or directory / "build.log"
    missing = [c for c in KUBE_COMMANDS if not (directory / c).exists()]
    if missing:
        if reason:
            raise BuildError(reason)
        started = time.monotonic()
        _go_build(GOMOD / f"kubernetes-{KUBERNETES_VERSION}", directory,
                  [f"k8s.io/kubernetes/cmd/{c}" for c in missing],
                  version_ldflags(KUBERNETES_VERSION), log)
        (directory / "build-seconds-kubernetes").write_text(f"{time.monotonic() - started:.0f}\n")
    if not (directory / "etcd").exists():
        if reason:
            raise BuildError(reason)
        started = time.monotonic()
        _go_build(GOMOD / f"etcd-{ETCD_VERSION}", directory, ["go.etcd.io/etcd/server/v3"],
                  "-s -w", log)
        # go names the binary of .../server/v3 after "server" (the major-version suffix dropped).
        (directory / "server").rename(directory / "etcd")
        (directory / "build-seconds-etcd").write_text(f"{time.monotonic() - started:.0f}\n")
    return Binaries(directory, KUBERNETES_VERSION)
