"""--compress: the pod-side wrapper run for real (busybox sh and dash, real gzip, dd and
tcpdump reading a capture) and the decompression stage fed in chunks cut anywhere."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from kubectl_zsniff.capture.compress import (
    FAILED_MARK,
    GzipStream,
    compressed_capture_command,
    missing_compressor,
)
from kubectl_zsniff.errors import ExitStatus
from kubectl_zsniff.formats.pcap import encode_pcap_header

SHELLS = [s for s in (["busybox", "sh"], ["dash"]) if shutil.which(s[0])]


def _pcap(packets: int, seed: int = 7) -> bytes:
    """A classic pcap of `packets` records, half text (compressible), half random bytes."""
    rng = random.Random(seed)
    out = bytearray(encode_pcap_header(linktype=1, snaplen=262144))
    for i in range(packets):
        body = (b'{"id": %d, "name": "user%d"}\n' % (i, i)) * rng.randint(1, 40) if i % 2 \
            else rng.randbytes(rng.randint(60, 1500))
        out += (1700000000 + i).to_bytes(4, "little") + (i * 7 % 10**6).to_bytes(4, "little")
        out += len(body).to_bytes(4, "little") * 2 + body
    return bytes(out)


def _record_ends(pcap: bytes) -> list[int]:
    ends, at = [], 24
    while at + 16 <= len(pcap):
        at += 16 + int.from_bytes(pcap[at + 8:at + 12], "little")
        ends.append(at)
    return ends


def _members(data: bytes, cut: int) -> bytes:
    """`data` as concatenated gzip members of at most `cut` bytes each, as the pod sends it."""
    return b"".join(gzip.compress(data[i:i + cut], compresslevel=1)
                    for i in range(0, len(data), cut)) + gzip.compress(b"")


def _decode(stream: bytes, chunk_sizes: list[int]) -> tuple[bytes, GzipStream]:
    got = bytearray()
    decoder = GzipStream(got.extend)
    at, i = 0, 0
    while at < len(stream):
        size = chunk_sizes[i % len(chunk_sizes)]
        decoder.feed(memoryview(stream[at:at + size]))
        at += size
        i += 1
    return bytes(got), decoder


@pytest.mark.parametrize("chunks", [[1], [2, 3, 5, 7], [10], [4096], [65537], [10**7]])
def test_chunks_cut_anywhere_give_the_same_pcap_bytes(chunks: list[int]) -> None:
    pcap = _pcap(400)
    stream = _members(pcap, 65536) if chunks != [1] else _members(pcap[:20000], 3000)
    want = pcap if chunks != [1] else pcap[:20000]
    got, decoder = _decode(stream, chunks)
    assert got == want
    assert not decoder.truncated and decoder.error is None
    assert decoder.compressed_bytes == len(stream) and decoder.pcap_bytes == len(want)


def test_every_member_boundary_and_header_split() -> None:
    """Members as small as one packet, the stream cut at every byte of a member boundary."""
    pcap = _pcap(30)
    stream = _members(pcap, 200)
    for split in range(1, 40):
        got, _ = _decode(stream, [split])
        assert got == pcap, split


def test_a_truncated_stream_still_gives_every_whole_packet_before_the_cut() -> None:
    pcap = _pcap(300)
    stream = _members(pcap, 65536)
    ends = _record_ends(pcap)
    rng = random.Random(3)
    for cut in sorted(rng.sample(range(30, len(stream) - 30), 40)):
        got, decoder = _decode(stream[:cut], [1000])
        assert pcap.startswith(got)  # a prefix, never a wrong byte
        assert decoder.truncated
        # The whole packets before the cut: every record whose compressed bytes all arrived.
        whole = [e for e in ends if e <= len(got)]
        member_start = stream.rfind(b"\x1f\x8b\x08", 0, cut)
        decoded_before_member, _ = _decode(stream[:member_start], [1000])
        assert len(got) >= len(decoded_before_member)
        assert all(pcap[:e] == got[:e] for e in whole)
    # A cut inside one big member loses at most what zlib had not yet written out.
    one = gzip.compress(pcap, compresslevel=1)
    got, decoder = _decode(one[: len(one) // 2], [777])
    assert decoder.truncated and pcap.startswith(got) and len(got) > len(pcap) // 3


def test_corrupt_data_is_an_error_not_a_traceback() -> None:
    stream = bytearray(_members(_pcap(50), 4000))
    stream[5000:5010] = b"\xff" * 10
    got, decoder = _decode(bytes(stream), [512])
    assert decoder.error is not None
    assert decoder.error.status == ExitStatus.STREAM_LOST
    assert "corrupt" in decoder.error.message and decoder.error.hint


def _run_wrapper(shell: list[str], tcpdump_args: list[str], env: dict[str, str] | None = None
                 ) -> tuple[int, bytes, str]:
    cmd = shell + compressed_capture_command("zsniff-unittest", tcpdump_args)[1:]
    # stdin stays open while tcpdump runs: closing it is how zsniff stops the capture.
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    out = proc.stdout.read()
    proc.stdin.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=30)
    # The chunks waited in /tmp/.zsniff-gz.PID (PID: the wrapper's shell): gone with it.
    assert not os.path.exists(f"/tmp/.zsniff-gz.{proc.pid}")
    return code, out, err


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump")
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_pod_wrapper_streams_exactly_tcpdumps_bytes(shell: list[str], tmp_path: Path
                                                        ) -> None:
    source = tmp_path / "in.pcap"
    source.write_bytes(_pcap(3000))
    code, out, err = _run_wrapper(shell, ["-r", str(source), "-U", "-w", "-"])
    assert code == 0, err
    assert "zsniff-pid " in err  # the PID zsniff stops and checks is still reported
    plain = subprocess.run(["tcpdump", "-r", str(source), "-w", "-"], capture_output=True,
                           check=True).stdout
    got, decoder = _decode(out, [4096])
    assert got == plain
    assert decoder.members >= 1 and not decoder.truncated
    assert len(out) < len(plain)  # the text half compresses


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump")
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_wrapper_ends_with_tcpdumps_exit_status(shell: list[str], tmp_path: Path) -> None:
    code, out, err = _run_wrapper(shell, ["-r", str(tmp_path / "missing.pcap"), "-w", "-"])
    assert code == 1 and "No such file" in err
    got, _ = _decode(out, [100])
    assert got == b""


@pytest.mark.skipif(not shutil.which("dash"), reason="needs dash")
def test_an_image_without_gzip_is_named_with_a_hint(tmp_path: Path) -> None:
    """An image whose shell is not busybox (whose sh runs its own gzip applet, PATH or not)
    and that has no gzip: the wrapper says so and zsniff names it."""
    shell = ["dash"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dd", "tcpdump", "cat", "touch", "sleep"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    env = {"PATH": str(bin_dir)}
    code, out, err = _run_wrapper([shutil.which(shell[0]) or shell[0], *shell[1:]],
                                  ["-r", "/dev/null", "-w", "-"], env)
    assert code == 127 and out == b""
    error = missing_compressor(err.splitlines())
    assert error is not None
    assert error.status == ExitStatus.CAPTURE_FAILED
    assert "no gzip" in error.message and "--compress" in error.hint
    assert missing_compressor(["tcpdump: syntax error"]) is None


def test_a_pod_side_that_cannot_hold_the_chunks_is_named_with_a_hint() -> None:
    error = missing_compressor([f"{FAILED_MARK} dd: can't open '/tmp/.zsniff-gz.7/c.3': "
                                "No space left on device"])
    assert error is not None and error.status == ExitStatus.CAPTURE_FAILED
    assert "No space left" in error.message and "/tmp" in error.hint


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump")
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_flood_is_gzipped_in_members_of_many_reads(shell: list[str], tmp_path: Path) -> None:
    """tcpdump writing faster than one gzip per read: the compressor takes every chunk the
    pump has finished as one member, so there are far fewer members than pipe reads (a pipe
    read holds at most 64 KiB), and the bytes are still exactly tcpdump's."""
    source = tmp_path / "in.pcap"
    pcap = _pcap(20000)
    source.write_bytes(pcap)
    code, out, err = _run_wrapper(shell, ["-r", str(source), "-U", "-w", "-"])
    assert code == 0, err
    got, decoder = _decode(out, [65536])
    assert got == pcap
    assert decoder.members < len(pcap) // 65536, decoder.members


@pytest.mark.skipif(not shutil.which("tcpdump"), reason="needs tcpdump")
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_each_packet_comes_out_while_tcpdump_still_runs(shell: list[str], tmp_path: Path
                                                        ) -> None:
    """A trickle of packets (a quiet pod): each is decoded within a fraction of a second of
    tcpdump writing it, not held by gzip until the capture ends."""
    import threading
    import time

    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    cmd = shell + compressed_capture_command("zsniff-unittest", ["-r", str(fifo), "-U",
                                                                 "-w", "-"])[1:]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdin is not None
    got = bytearray()
    decoder = GzipStream(got.extend)
    stdout = proc.stdout

    def read() -> None:
        while chunk := os.read(stdout.fileno(), 65536):
            decoder.feed(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    pcap = _pcap(6)
    ends = _record_ends(pcap)
    delays = []
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(pcap[:24])
        start = 24
        for end in ends:
            writer.write(pcap[start:end])
            sent = time.monotonic()
            while len(got) < end and time.monotonic() - sent < 5:
                time.sleep(0.001)
            delays.append(time.monotonic() - sent)
            assert bytes(got) == pcap[:end]
            start = end
            time.sleep(0.2)
    reader.join(timeout=10)
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    # The wrapper waits 50 ms after a short read; a loaded 2-core machine adds some.
    assert max(delays) < 1.0, delays


def test_via_node_runs_its_own_capture_script_inside_the_compress_wrapper() -> None:
    """--via-node with --compress: the wrapper gets the script that enters the pod's network
    namespace, with the pod's UID before tcpdump's arguments, as capture_command passes it."""
    from kubectl_zsniff.kube.scripts import VIA_NODE_CAPTURE_SCRIPT, capture_command

    plain = capture_command("zsniff-1", ["-i", "eth0"], "uid-1")
    wrapped = compressed_capture_command("zsniff-1", ["-i", "eth0"], "uid-1")
    assert plain[2] == VIA_NODE_CAPTURE_SCRIPT
    assert wrapped[:2] == ["sh", "-c"] and wrapped[4] == VIA_NODE_CAPTURE_SCRIPT
    assert wrapped[5:] == plain[4:] == ["zsniff-1", "uid-1", "-i", "eth0"]
