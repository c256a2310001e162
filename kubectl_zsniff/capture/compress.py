"""--compress: tcpdump's stream gzipped in the pod, decompressed here as it arrives.

The pod side is the capture image's own `gzip` and `dd` (busybox has both). One gzip process
for the whole stream would hold every packet until it has ~280 KiB of pcap to compress
(measured with busybox gzip: a quiet pod would show nothing until the stop), and busybox gzip
cannot be told to flush. So each read of tcpdump's pipe (whatever is there, at most 64 KiB)
becomes its own gzip member: a quiet capture gets each packet at once, a busy one 64 KiB
members. gzip members concatenate into one valid gzip stream, which `GzipStream` decodes.

Stopping is unchanged: the wrapped capture script is the same (tcpdump's PID, the stdin that
stops it, the heartbeat), the members loop ends when tcpdump's pipe ends, and the exec's exit
status is tcpdump's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.container import CAPTURE_SCRIPT

MISSING_MARK = "zsniff-no-compressor"

# $1: the capture script, then its own arguments. Nothing of the user's passes through a shell:
# the filter and the rest stay argv elements of the inner script ("$@").
# fd 4 is the exec's stdout (where the members go); fd 5 carries tcpdump's exit status out of
# the pipeline, so the exec ends with tcpdump's status, as without --compress. Each member is
# one `dd` read of at most 32 KiB: a short read returns what the pipe holds. dd says "0+0
# records in" at the end, "0+1" for a short read (busybox's dd prints no byte count): then
# the pipe was not full, and the loop waits 50 ms before the next read, or it would spin a
# gzip per packet or two (measured: 220 members/s, half a core, at 2 MB/s); after a full read
# ("1+0") it reads again at once.
COMPRESS_SCRIPT = (
    's="$1"; shift; '
    'for tool in gzip dd; do command -v "$tool" >/dev/null 2>&1 || '
    f'{{ echo "{MISSING_MARK} $tool" >&2; exit 127; }}; done; '
    "exec 4>&1; "
    'rc=$( { { sh -c "$s" zsniff "$@" 4>&- 5>&-; echo "$?" >&5; } | '
    "{ while :; do "
    "st=$( { LC_ALL=C dd bs=32768 count=1 2>&3 | gzip -1 -c >&4; } 3>&1 ); "
    'case "$st" in 0+0*) break;; 0+1*) sleep 0.05 2>/dev/null;; esac; '
    "done; } 5>&-; } 5>&1 ); "
    'exit "${rc:-1}"'
)


def compressed_capture_command(container_name: str, tcpdump_args: list[str]) -> list[str]:
    return ["sh", "-c", COMPRESS_SCRIPT, "zsniff", CAPTURE_SCRIPT, container_name,
            *tcpdump_args]


def missing_compressor(errors: list[str]) -> ZsniffError | None:
    """The error for an image without gzip or dd, from the wrapper's stderr lines."""
    for line in errors:
        if line.startswith(MISSING_MARK):
            tool = line[len(MISSING_MARK):].strip() or "gzip"
            return ZsniffError(
                f"--compress needs gzip and dd in the capture image, and it has no {tool}",
                "capture without --compress, or use an image that has them (--image; "
                "busybox-based images such as the default netshoot do)",
                ExitStatus.CAPTURE_FAILED,
            )
    return None


class GzipStream:
    """Decompresses concatenated gzip members as they arrive, in chunks cut anywhere, and hands
    the pcap bytes on. A stream cut inside a member still hands on every byte before the cut
    that zlib can decode; corrupt data stops the decoding with `error` set."""

    def __init__(self, sink: Callable[[memoryview], None]) -> None:
        self._sink = sink
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._inside = False  # bytes of a member read whose end has not come
        self.compressed_bytes = 0
        self.pcap_bytes = 0
        self.members = 0
        self.error: ZsniffError | None = None

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.error is not None:
            return
        self.compressed_bytes += len(chunk)
        data: bytes | memoryview = chunk
        try:
            while data:
                self._inside = True
                out = self._member.decompress(data)
                if out:
                    self.pcap_bytes += len(out)
                    self._sink(memoryview(out))
                if not self._member.eof:
                    return
                self.members += 1
                self._inside = False
                data = self._member.unused_data
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as err:
            self.error = ZsniffError(
                f"the compressed capture stream is corrupt ({err})",
                "the file holds every packet before it; capture again, or without --compress",
                ExitStatus.STREAM_LOST,
            )

    def restart(self) -> None:
        """A new stream from the pod (a reconnect): what the old one left inside a member is
        gone with it; byte counts go on."""
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._inside = False
        self.error = None

    @property
    def truncated(self) -> bool:
        """The stream ended inside a gzip member (cut, not finished by the pod)."""
        return self._inside and self.error is None

    def ratio(self) -> float | None:
        return self.pcap_bytes / self.compressed_bytes if self.compressed_bytes else None


def compression_notes(stream: GzipStream) -> list[str]:
    """What the summary says of a compressed stream: its size over the link, a cut member."""
    notes = []
    ratio = stream.ratio()
    if ratio is not None:
        notes.append(f"--compress: {stream.compressed_bytes / 1e6:.1f} MB over the API server "
                     f"link for {stream.pcap_bytes / 1e6:.1f} MB of pcap ({ratio:.1f}x)")
    if stream.truncated:
        notes.append("the compressed stream ended inside a gzip member (the connection was "
                     "cut): every whole packet zlib could decode before the cut is kept")
    return notes


__all__ = ["COMPRESS_SCRIPT", "GzipStream", "compressed_capture_command", "compression_notes",
           "missing_compressor"]
