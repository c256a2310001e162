"""Build the krew archive (a launcher that installs the pinned release) and its manifest.

`python packaging/krew/build.py [--out dist]` writes dist/kubectl-zsniff-krew-VERSION.tar.gz
(reproducible: sorted, fixed times and owners) and krew-manifest.yaml with its real sha256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASES = "https://github.com/kubectl-zsniff/kubectl-zsniff/releases/download"
PLATFORMS = [("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")]


def version() -> str:
    text = (ROOT / "kubectl_zsniff" / "__init__.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    assert match
    return match.group(1)


def archive_bytes(ver: str) -> bytes:
    launcher = (ROOT / "packaging" / "krew" / "kubectl-zsniff").read_text()
    files = {
        "kubectl-zsniff": (launcher.replace("__VERSION__", ver).encode(), 0o755),
        "LICENSE": ((ROOT / "LICENSE").read_bytes(), 0o644),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def manifest(ver: str, sha256: str) -> str:
    platforms = "".join(
        f"""  - selector:
      matchLabels:
        os: {os_name}
        arch: {arch}
    uri: {RELEASES}/v{ver}/kubectl-zsniff-krew-{ver}.tar.gz
    sha256: {sha256}
    bin: kubectl-zsniff
"""
        for os_name, arch in PLATFORMS
    )
    return f"""apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: zsniff
spec:
  version: v{ver}
  homepage: https://github.com/kubectl-zsniff/kubectl-zsniff
  shortDescription: Capture pod traffic into pcapng, Wireshark or Zeek, with pod names
  description: |
    Injects an ephemeral tcpdump container into a pod and streams the capture
    to a pcapng file, stdout, a live Wireshark, Zeek or the terminal, with pod,
    service and node names inside the capture (name resolution blocks).
    Works on containerd and CRI-O, distroless pods and PodSecurity baseline.
  caveats: |
    Needs Python >= 3.10 on your machine: the first run installs kubectl-zsniff
    {ver} from PyPI into ~/.local/share/kubectl-zsniff. Names show in Wireshark
    with View > Name Resolution > Resolve Network Addresses (or -N n).
  platforms:
{platforms}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "dist"))
    args = parser.parse_args()
    ver = version()
    data = archive_bytes(ver)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kubectl-zsniff-krew-{ver}.tar.gz").write_bytes(data)
    (ROOT / "krew-manifest.yaml").write_text(manifest(ver, hashlib.sha256(data).hexdigest()))
    print(out / f"kubectl-zsniff-krew-{ver}.tar.gz")


if __name__ == "__main__":
    main()
