"""--compress: tcpdump's stream gzipped in the pod, decompressed here as it arrives.

The pod side is the capture image's own busybox tools (`gzip`, `dd`, `cat`, `mkdir`, `rm`,
`sleep`). One gzip process for the whole stream would hold every packet until it has ~280 KiB
of pcap to compress (measured with busybox gzip: a quiet pod would show nothing until the
stop), and busybox gzip cannot be told to flush. So the stream goes out as gzip members: a
pump copies each read of tcpdump's pipe into a chunk file at once, and a compressor gzips
every chunk that is whole when it comes round as one member (COMPRESS_SCRIPT says why). A
quiet capture gets each packet at once, a flood large members. gzip members concatenate into
one valid gzip stream, which `GzipStream` decodes.

Stopping is unchanged: the wrapped capture script is the same (tcpdump's PID, the stdin that
stops it, the heartbeat), the members loop ends when tcpdump's pipe ends, and the exec's exit
status is tcpdump's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.scripts import CAPTURE_SCRIPT, VIA_NODE_CAPTURE_SCRIPT

MISSING_MARK = "zsniff-no-compressor"
FAILED_MARK = "zsniff-compress-failed"
# The pump may run this many pipe reads ahead of gzip before it stops reading tcpdump's pipe
# (at most 64 KiB a read, 8 KiB in a pipe of 2 pages): what waits in the pod's /tmp is bounded.
BACKLOG_READS = 64

# $1: the capture script, then its own arguments. Nothing of the user's passes through a shell:
# the filter and the rest stay argv elements of the inner script ("$@").
# fd 4 is the exec's stdout (where the members go); fd 5 carries tcpdump's exit status out of
# the pipeline, so the exec ends with tcpdump's status, as without --compress.
#
# Two loops, so that neither a quiet pod nor a flood waits on the other:
# - the pump reads tcpdump's pipe, one `dd` read per chunk file c.N in a private folder (a
#   read returns what the pipe holds, at once), and tells the compressor N on its stdout. It
#   never holds data while it waits for more: what it read is in a file before it reads
#   again. A container's pipes can be 2 pages (8 KiB: uid 0 over fs.pipe-user-pages-soft
#   machine-wide), so under a flood reads are small: they cost a fork each, never a wait.
# - the compressor wakes on a number and takes every chunk known whole by then (c.N is whole
#   once c.N+1 exists: the pump fills one at a time), gzipped as ONE member, then removes
#   them. A single packet goes out alone, at once. When it found more than one chunk, the pump
#   is ahead (a flood): it waits 20 ms before the next member, so that members get large
#   (fewer gzip starts, less of the pod's CPU, a better ratio) and the pump gets the CPU.
# The pump waits while chunk N-BACKLOG_READS is still there: the compressor (or the link) is
# behind, and tcpdump's pipe and kernel buffer take the rest, as without --compress.
# dd's status for the read that ended the pump: "0+0 records in" is the end of the stream;
# anything else (a full disk) is said on stderr with FAILED_MARK.
COMPRESS_SCRIPT = (
    's="$1"; shift; '
    'for tool in gzip dd cat mkdir rm sleep; do command -v "$tool" >/dev/null 2>&1 || '
    f'{{ echo "{MISSING_MARK} $tool" >&2; exit 127; }}; done; '
    'd="/tmp/.zsniff-gz.$$"; rm -rf "$d"; '
    f'mkdir -m 700 "$d" || {{ echo "{FAILED_MARK} cannot make $d" >&2; exit 127; }}; '
    "exec 4>&1; "
    'rc=$( { { sh -c "$s" zsniff "$@" 4>&- 5>&-; echo "$?" >&5; } | '
    "{ i=0; while :; do "
    f'while [ -e "$d/c.$((i-{BACKLOG_READS}))" ]; do sleep 0.01 2>/dev/null || sleep 1; done; '
    'dd bs=65536 count=1 of="$d/c.$i" 2>"$d/e"; '
    '[ -s "$d/c.$i" ] || break; echo "$i"; i=$((i+1)); done; '
    'st=""; read -r st <"$d/e"; '
    f'case "$st" in 0+0*) ;; *) echo "{FAILED_MARK} $st" >&2;; esac; }} | '
    "{ j=0; while read -r k; do "
    '[ "$k" -lt "$j" ] && continue; '
    'while [ -e "$d/c.$((k+2))" ]; do k=$((k+1)); done; '
    'set --; n=$j; while [ "$n" -le "$k" ]; do set -- "$@" "$d/c.$n"; n=$((n+1)); done; '
    'if [ $# -eq 1 ]; then gzip -1 -c <"$1" >&4; else cat "$@" | gzip -1 -c >&4; fi; '
    'rm -f "$@"; [ $# -gt 1 ] && sleep 0.02 2>/dev/null; j=$((k+1)); done; } 5>&-; } 5>&1 ); '
    'rm -rf "$d"; '
    'exit "${rc:-1}"'
)


def compressed_capture_command(container_name: str, tcpdump_args: list[str],
                               enter_pod_uid: str | None = None) -> list[str]:
    """capture_command's script (with `enter_pod_uid`: --via-node's) run inside the compress
    wrapper, with the same arguments."""
    if enter_pod_uid:
        return ["sh", "-c", COMPRESS_SCRIPT, "zsniff", VIA_NODE_CAPTURE_SCRIPT, container_name,
                enter_pod_uid, *tcpdump_args]
    return ["sh", "-c", COMPRESS_SCRIPT, "zsniff", CAPTURE_SCRIPT, container_name,
            *tcpdump_args]


def missing_compressor(errors: list[str]) -> ZsniffError | None:
    """The error for an image without the tools --compress runs, or a pod side that could not
    buffer the stream (no writable /tmp, a full disk), from the wrapper's stderr lines."""
    for line in errors:
        if line.startswith(MISSING_MARK):
            tool = line[len(MISSING_MARK):].strip() or "gzip"
            return ZsniffError(
                f"--compress needs gzip, dd, cat, mkdir, rm and sleep in the capture image, "
                f"and it has no {tool}",
                "capture without --compress, or use an image that has them (--image; "
                "busybox-based images such as the default netshoot do)",
                ExitStatus.CAPTURE_FAILED,
            )
        if line.startswith(FAILED_MARK):
            why = line[len(FAILED_MARK):].strip() or "unknown reason"
            return ZsniffError(
                f"--compress: the capture container could not hold the stream in its /tmp "
                f"({why})",
                "capture without --compress, or free space in the capture container's /tmp "
                "(the node's disk)",
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


__all__ = ["BACKLOG_READS", "COMPRESS_SCRIPT", "FAILED_MARK", "MISSING_MARK", "GzipStream",
           "compressed_capture_command", "compression_notes", "missing_compressor"]
