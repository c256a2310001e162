"""Container images made from this machine's Debian binaries (no registry is reachable).

Each image is one layer: the named programs, the shared libraries ``ldd`` says they load,
busybox's applets as links, and a minimal /etc. They are written as docker-archive tars
(``manifest.json`` with RepoTags), which ``ctr images import`` reads, named with their full
references so that CRI finds them under the names pods use. The tars are cached by content.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, no libraries

PAUSE = "zsniff.test/pause:1"
TOOLS = "zsniff.test/tools:1"
CAPTURE = "zsniff.test/capture:1"
DISTROLESS = "zsniff.test/distroless:1"
# zsniff's default --image, so that a capture without --image works on the test cluster, and
# the name the e2e tests pass as --image (the double ignores it): both run the capture image.
ZSNIFF_DEFAULT_IMAGE = "docker.io/nicolaka/netshoot:v0.13"
E2E_CAPTURE_ALIAS = "docker.io/library/busybox:latest"

PASSWD = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:108::/nonexistent:/usr/sbin/nologin\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\ntcpdump:x:108:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class ImageSpec:
    tags: tuple[str, ...]
    programs: tuple[str, ...] = ()  # host paths copied with their libraries
    busybox_at: str = "bin/busybox"  # where the busybox binary goes in the image
    busybox_applets: bool = True  # /bin/sh, sleep, ... as links to busybox
    command: tuple[str, ...] = ("sleep", "infinity")
    extra_files: dict[str, str] = field(default_factory=dict)  # path in image -> text


def specs() -> list[ImageSpec]:
    etc = {"etc/passwd": PASSWD, "etc/group": GROUP, "etc/hosts": "127.0.0.1 localhost\n"}
    return [
        # Any static program that blocks works as the sandbox's pause process.
        ImageSpec((PAUSE,), (), busybox_applets=False, command=("/bin/busybox", "sleep",
                                                                  "2147483647")),
        ImageSpec((TOOLS,), ("/usr/bin/socat", "/usr/bin/curl"), extra_files=etc),
        ImageSpec((CAPTURE, ZSNIFF_DEFAULT_IMAGE, E2E_CAPTURE_ALIAS), ("/usr/bin/tcpdump",),
                  extra_files=etc),
        # No shell and no tcpdump: one static program, busybox named /sleep (busybox acts as
        # the applet its file is named after, so this one can only sleep).
        ImageSpec((DISTROLESS,), (), busybox_at="sleep", busybox_applets=False,
                  command=("/sleep", "2147483647")),
    ]


def libraries(program: str) -> list[str]:
    """The shared objects a dynamic program loads (``ldd``), including the loader."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def _members(spec: ImageSpec) -> list[tuple[str, str | bytes, int, str | None]]:
    """(path in image, host path or content, mode, link target) in a stable order."""
    members: dict[str, tuple[str | bytes, int, str | None]] = {}
    for directory in ("bin", "etc", "tmp", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys",
                      "root", "var", "var/run"):
        members[directory] = (b"", 0o1777 if directory == "tmp" else 0o755, "dir")
    members[spec.busybox_at] = (BUSYBOX, 0o755, None)
    if spec.busybox_applets:
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            members.setdefault(f"bin/{applet}", (b"", 0o777, "/bin/busybox"))
    for program in spec.programs:
        for path in (program, *libraries(program)):
            real = str(Path(path).resolve())
            members[path.lstrip("/")] = (real, 0o755, None)
            if program == path:
                # Also reachable as bin/NAME, the PATH busybox's sh searches first.
                members[f"bin/{Path(path).name}"] = (b"", 0o777, path)
    for path, text in spec.extra_files.items():
        members[path] = (text.encode(), 0o644, None)
    return sorted((path, *value) for path, value in members.items())


def _layer(spec: ImageSpec) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made_dirs: set[str] = set()
        for path, source, mode, link in _members(spec):
            parent = str(Path(path).parent)
            for i in range(len(Path(parent).parts)):
                d = str(Path(*Path(parent).parts[: i + 1]))
                if d not in made_dirs and d != ".":
                    made_dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.mode = mode
            if link == "dir":
                if path in made_dirs:
                    continue
                made_dirs.add(path)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                data = Path(source).read_bytes() if isinstance(source, str) else source
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive(spec: ImageSpec) -> bytes:
    """A docker-archive tar of the image: manifest.json, the config, one layer."""
    layer = _layer(spec)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": list(spec.command), "Env": ["PATH=/bin:/usr/bin:/usr/sbin:/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/realcluster/images.py"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": list(spec.tags),
                            "Layers": ["layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("manifest.json", manifest), (config_name, config),
                           ("layer.tar", layer)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def missing_tools() -> list[str]:
    return [p for p in (BUSYBOX, "/usr/bin/tcpdump", "/usr/bin/socat", "/usr/bin/curl")
            if shutil.which(p) is None]


def build_all(cache: Path) -> list[Path]:
    """Every image as a tar under `cache` (reused while its content is unchanged)."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs():
        data = archive(spec)
        digest = hashlib.sha256(data).hexdigest()[:16]
        path = cache / f"{spec.tags[0].split('/')[-1].replace(':', '-')}-{digest}.tar"
        if not path.exists():
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            tmp.replace(path)
        paths.append(path)
    return paths


def import_all(ctr: Iterable[str], tars: list[Path]) -> None:
    """`ctr -n k8s.io images import` each tar (containerd unpacks it for overlayfs)."""
    for tar in tars:
        subprocess.run([*ctr, "-n", "k8s.io", "images", "import", str(tar)],
                       check=True, capture_output=True, timeout=120)
