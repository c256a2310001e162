"""The typed boundary between command-line flags and the core: frozen, validated values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

# A pinned, maintained, multi-arch (amd64, arm64) image that ships tcpdump and a POSIX shell.
# netshoot is the image the Kubernetes community reaches for in `kubectl debug`; pinning the tag
# keeps captures reproducible. `--image` overrides it (any image with sh + tcpdump works).
DEFAULT_IMAGE = "docker.io/nicolaka/netshoot:v0.13"

# tcpdump's own default snapshot length.
DEFAULT_SNAPLEN = 262144
# tcpdump -B, in KiB. In immediate mode libpcap's ring holds fixed-size frames (up to 64 KiB on
# an interface with offloads, as veths have), so tcpdump's own 2 MiB holds ~32 packets: a
# burst while tcpdump waits for CPU (a BestEffort pod gets cpu.shares 2 on a busy node)
# overflowed it on the real cluster, 125-134 of ~380 packets dropped; 8 MiB dropped none.
DEFAULT_BUFFER_KIB = 8192

if TYPE_CHECKING:
    from kubectl_zsniff.zeek.select import RowSelection


class OutputFormat(str, Enum):
    PCAPNG = "pcapng"
    PCAP = "pcap"


@dataclass(frozen=True)
class KubeOptions:
    """Where the API server is and who we are: kubectl's own flags."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float | None = None


@dataclass(frozen=True)
class TargetOptions:
    """Which pods: named ones, and/or those matching a label selector."""

    pods: tuple[str, ...] = ()
    container: str | None = None
    selector: str | None = None
    all_namespaces: bool = False
    max_pods: int = 20
    skip_uncapturable: bool = False  # capture the pods that can be, say which were skipped
    capture_namespace: str | None = None  # node/NAME, --via-node: where capture pods are made
    via_node: bool = False  # from a capture pod on each pod's node, the pods left unchanged


@dataclass(frozen=True)
class InjectOptions:
    image: str = DEFAULT_IMAGE
    privileged: bool = False
    start_timeout: float = 120.0
    # The capture container exits by itself after this long without a capture running in it,
    # so nothing stays behind if the laptop vanishes mid-capture.
    idle_lifetime: int = 600


@dataclass(frozen=True)
class CaptureLimits:
    packet_count: int | None = None
    duration: float | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class TcpdumpOptions:
    interface: str = "eth0"
    snaplen: int = DEFAULT_SNAPLEN
    bpf_filter: str = ""
    promiscuous: bool = True
    buffer_kib: int = DEFAULT_BUFFER_KIB
    # --compress: the pod gzips the stream (capture/compress.py), zsniff decompresses it.
    compress: bool = False

    def argv(self, packet_count: int | None = None) -> list[str]:
        """tcpdump's arguments. Each is one argv element: nothing goes through a shell."""
        # --immediate-mode: libpcap otherwise holds packets up to its 1 s block timeout, and
        # tcpdump stopped by a signal loses what it still holds (measured: a ping sent 0.4 s
        # before Ctrl-C was missing from the file). It also makes the first packet show at once.
        args = ["-i", self.interface, "-s", str(self.snaplen), "-B", str(self.buffer_kib),
                "--immediate-mode", "-U", "-w", "-"]
        if packet_count is not None:
            args += ["-c", str(packet_count)]  # tcpdump stops itself exactly there
        if not self.promiscuous:
            args.append("-p")
        if self.bpf_filter:
            args.append(self.bpf_filter)
        return args


@dataclass(frozen=True)
class RotationOptions:
    """tcpdump's -C/-G/-W: a new file past a size or an age, and at most `ring` files kept."""

    size: int | None = None  # bytes
    every: float | None = None  # seconds
    ring: int | None = None

    @property
    def active(self) -> bool:
        return self.size is not None or self.every is not None


@dataclass(frozen=True)
class OutputOptions:
    path: Path | None = None  # None: no file; Path("-"): standard output
    fmt: OutputFormat = OutputFormat.PCAPNG
    wireshark: bool = False
    wireshark_path: str | None = None
    zeek_dir: Path | None = None
    zeek_scripts: tuple[str, ...] = ()
    view: bool = False
    force: bool = False  # overwrite an existing, non-empty regular file
    zeek_json: str | None = None  # --zeek-json FILE, or "-" for standard output
    zeek_selection: RowSelection | None = None  # --zeek-logs / --zeek-only
    rotation: RotationOptions = field(default_factory=RotationOptions)
    # Several pods: packets in time order through a reorder window this long (0: arrival order).
    reorder_window: float = 0.25
    # Several pods: a packet seen at both ends (leaving one captured pod, entering another)
    # is written once (pipeline/dedup.py).
    dedup: bool = False

    @property
    def zeek(self) -> bool:
        return self.zeek_dir is not None or self.zeek_json is not None

    @property
    def to_stdout(self) -> bool:
        return self.path is not None and str(self.path) == "-"


@dataclass(frozen=True)
class CaptureOptions:
    kube: KubeOptions
    target: TargetOptions
    inject: InjectOptions = field(default_factory=InjectOptions)
    tcpdump: TcpdumpOptions = field(default_factory=TcpdumpOptions)
    limits: CaptureLimits = field(default_factory=CaptureLimits)
    output: OutputOptions = field(default_factory=OutputOptions)
    names: bool = True
    # How long a pod's dropped stream is reconnected for (seconds); 0: not at all.
    reconnect_for: float = 300.0
