"""Rotation (-C/-G/-W): every file a complete pcapng read alone by capinfos and tshark with its
names, no packet lost or doubled between consecutive files, the ring never over N files."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.formats.pcap import encode_pcap_header, encode_pcap_record
from kubectl_zsniff.formats.pcapng import Interface, NameRecords, PacketRecord, read_capture
from kubectl_zsniff.kube.pod import PodInfo
from kubectl_zsniff.names.book import NameBook
from kubectl_zsniff.names.map import PodName
from kubectl_zsniff.options import CaptureLimits, RotationOptions, TcpdumpOptions
from kubectl_zsniff.pipeline.output import OutputPipeline
from kubectl_zsniff.sinks.rotate import (
    RotatingFileSink,
    existing_rotated_files,
    refuse_rotated_overwrite,
    rotated_path,
)
from tests.unit.capture_fixtures import require_tool, udp_frame

WEB = PodInfo("shop", "web-1", "node-a", ("app",), "Running", ("10.244.1.1",))
DB = PodInfo("shop", "db-0", "node-a", ("db",), "Running", ("10.244.1.2",))


def numbered_stream(first: int, count: int, size: int = 400, src: str = "10.244.1.1") -> bytes:
    """tcpdump's pcap output: UDP packets whose payload starts with their sequence number."""
    return b"".join(
        encode_pcap_record(1_700_000_000 + n // 1000, n % 1000,
                           udp_frame(src, "10.244.1.9", n.to_bytes(4, "big") * (size // 4)))
        for n in range(first, first + count)
    )


def sequence(path: Path) -> list[int]:
    return [int.from_bytes(e.data[42:46], "big")
            for e in read_capture(path.read_bytes(), allow_truncated=False)
            if isinstance(e, PacketRecord)]


def capinfos_packets(path: Path) -> int:
    out = subprocess.run([require_tool("capinfos"), "-c", "-M", str(path)],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "Number of packets" in ln)
    return int(line.split(":")[1].strip())


def tshark_hosts(path: Path) -> set[str]:
    out = subprocess.run([require_tool("tshark"), "-r", str(path), "-N", "n", "-T", "fields",
                          "-e", "ip.src_host", "-e", "ip.dst_host"],
                         capture_output=True, text=True, check=True).stdout
    return {h for line in out.splitlines() for h in line.split("\t") if h}


def rotated_capture(tmp_path: Path, rotation: RotationOptions, pods: list[PodInfo],
                    book: NameBook | None = None) -> tuple[OutputPipeline, RotatingFileSink]:
    sink = RotatingFileSink(tmp_path / "web.pcapng", rotation)
    pipe = OutputPipeline([sink], pods, ["zsniff-a"] * len(pods), "ctx", TcpdumpOptions(),
                          CaptureLimits(), book)
    return pipe, sink


def test_ring_of_three_1mb_files_keeps_a_gapless_tail_each_file_complete(
        tmp_path: Path) -> None:
    book = NameBook()
    book.record("10.244.1.9", PodName("tools/client", "tools"), 0.0)
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=1_000_000, ring=3), [WEB], book)
    stream = encode_pcap_header(1) + numbered_stream(0, 12_000)
    largest = 0
    for offset in range(0, len(stream), 4096):  # the API server's message size
        pipe.feed(stream[offset:offset + 4096])
        largest = max(largest, len(existing_rotated_files(tmp_path / "web.pcapng")))
    result = sink.close()
    assert largest == 3, "the ring never holds more than 3 files"
    files = existing_rotated_files(tmp_path / "web.pcapng")
    assert files == result.files and len(files) == 3
    assert result.removed > 0 and files[-1] == rotated_path(tmp_path / "web.pcapng",
                                                           3 + result.removed)
    sequences = []
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size <= 1_000_000
        seq = sequence(path)
        assert capinfos_packets(path) == len(seq)
        assert {"shop/web-1", "tools/client"} <= tshark_hosts(path), path
        sequences.append(seq)
    joined = [n for seq in sequences for n in seq]
    # Consecutive files meet exactly: the last 3 files hold every packet of their span.
    assert joined == list(range(joined[0], 12_000))


def test_rotation_by_age_starts_a_file_at_the_first_packet_past_it(tmp_path: Path) -> None:
    now = [0.0]
    sink = RotatingFileSink(tmp_path / "web.pcapng", RotationOptions(every=60.0),
                            clock=lambda: now[0])
    pipe = OutputPipeline([sink], WEB, "zsniff-a", "ctx", TcpdumpOptions(), CaptureLimits(), None)
    pipe.feed(encode_pcap_header(1) + numbered_stream(0, 5))
    now[0] = 59.0
    pipe.feed(numbered_stream(5, 5))
    now[0] = 61.0
    pipe.feed(numbered_stream(10, 5))
    files = sink.close().files
    assert [sequence(p) for p in files] == [list(range(10)), list(range(10, 15))]


def test_several_pods_every_file_names_every_interface_started(tmp_path: Path) -> None:
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=50_000), [WEB, DB])
    web, db = pipe.lanes
    web.feed(encode_pcap_header(1) + numbered_stream(0, 50))
    db.feed(encode_pcap_header(1) + numbered_stream(1000, 200, src="10.244.1.2"))
    web.feed(numbered_stream(50, 200))
    files = sink.close().files
    assert len(files) > 3
    for path in files[1:]:
        events = list(read_capture(path.read_bytes(), allow_truncated=False))
        names = [e.name for e in events if isinstance(e, Interface)]
        assert names == ["shop/web-1", "shop/db-0"], path
        hosts = tshark_hosts(path)
        assert hosts & {"shop/web-1", "shop/db-0"}, path
        assert not hosts & {"10.244.1.1", "10.244.1.2"}, f"{path}: a pod left unnamed"
    seen = sorted(n for p in files for n in sequence(p))
    assert seen == sorted(list(range(250)) + list(range(1000, 1200)))


def test_a_name_learnt_mid_capture_is_in_every_later_file(tmp_path: Path) -> None:
    book = NameBook()
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=30_000), [WEB], book)
    pipe.feed(encode_pcap_header(1) + numbered_stream(0, 30))
    book.record("10.244.1.9", PodName("tools/client", "tools"), 1.0)
    pipe.feed(numbered_stream(30, 300))
    files = sink.close().files
    assert len(files) >= 4
    for path in files[1:]:
        assert "tools/client" in tshark_hosts(path), path


def test_an_earlier_rotated_capture_is_not_overwritten_without_force(tmp_path: Path) -> None:
    base = tmp_path / "web.pcapng"
    refuse_rotated_overwrite(base, force=False)
    rotated_path(base, 7).write_bytes(b"x")
    (tmp_path / "web-notes.pcapng").write_bytes(b"x")  # not one of ours
    with pytest.raises(ZsniffError) as caught:
        refuse_rotated_overwrite(base, force=False)
    assert caught.value.status == ExitStatus.OUTPUT_ERROR
    assert "web-00007.pcapng" in caught.value.message
    refuse_rotated_overwrite(base, force=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_a_clear_error_and_finished_files_stay_whole(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], check=True)
    try:
        sink = RotatingFileSink(disk / "web.pcapng", RotationOptions(size=100_000))
        pipe = OutputPipeline([sink], WEB, "zsniff-a", "ctx", TcpdumpOptions(),
                              CaptureLimits(), None)
        stream = encode_pcap_header(1) + numbered_stream(0, 2000)
        for offset in range(0, len(stream), 4096):
            pipe.feed(stream[offset:offset + 4096])
            if pipe.failure is not None:
                break
        assert pipe.failure is not None and pipe.failure.status == ExitStatus.OUTPUT_ERROR
        assert "No space left" in pipe.failure.message
        assert "finished files before it are intact" in pipe.failure.message
        files = sink.close().files
        seqs = [sequence(p) for p in files]  # every file, the last too, ends on a whole block
        joined = [n for s in seqs for n in s]
        assert joined == list(range(len(joined))) and len(files) >= 2
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_released_addresses_are_not_carried_into_each_new_file(tmp_path: Path) -> None:
    """Pods come and go for the whole capture: each new file names the addresses owned when it
    starts, not every address the capture ever saw (which grew each file's name table, and
    the pipeline's, without end). Within a file, a release is still stated as it happens."""
    book = NameBook(clock=lambda: 0.0)
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=20_000), [WEB], book)
    pipe.feed(encode_pcap_header(1) + numbered_stream(0, 10))
    for n in range(200):
        key = ("pods", "tools", f"job-{n}")
        book.set_object(key, [(f"10.244.2.{n}", PodName(f"tools/job-{n}", "tools"))], at=1.0)
        pipe.feed(numbered_stream(10 + n * 3, 3))
        book.set_object(key, [], at=2.0)
    book.set_object(("pods", "tools", "client"),
                    [("10.244.1.9", PodName("tools/client", "tools"))], at=3.0)
    pipe.feed(numbered_stream(610, 100))
    files = sink.close().files
    assert len(files) > 5
    first_names = []
    for path in files:
        tables = [e for e in read_capture(path.read_bytes(), allow_truncated=False)
                  if isinstance(e, NameRecords)]
        first_names.append({ip for ip, _ in tables[0].records})
        stated = {ip: names[0] for t in tables for ip, names in t.records}
        # a job released within this file is renamed to itself there, as before
        assert all(name in (ip, f"tools/job-{ip.rsplit('.', 1)[1]}")
                   for ip, name in stated.items() if ip.startswith("10.244.2.")), path
    assert first_names[-1] == {"10.244.1.1", "10.244.1.9"}, first_names[-1]
    assert max(len(names) for names in first_names) <= 4, [len(n) for n in first_names]
    assert len(pipe.names.named) <= 4, pipe.names.named
    assert "tools/client" in tshark_hosts(files[-1])
    assert sorted(n for p in files for n in sequence(p)) == list(range(710))


def test_an_address_reowned_in_one_file_carries_no_comment_in_the_next(tmp_path: Path) -> None:
    """The owner comment says what a file named the address before; a new file names it once."""
    book = NameBook(clock=lambda: 0.0)
    book.set_object(("pods", "tools", "old"), [("10.244.1.9", PodName("tools/old", "tools"))],
                    at=0.0)
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=30_000), [WEB], book)
    pipe.feed(encode_pcap_header(1) + numbered_stream(0, 20))
    book.set_object(("pods", "tools", "old"), [], at=1.0)
    book.set_object(("pods", "tools", "new"), [("10.244.1.9", PodName("tools/new", "tools"))],
                    at=1.0)
    for first in range(20, 320, 10):  # chunks as a stream brings them
        pipe.feed(numbered_stream(first, 10))
    files = sink.close().files
    assert len(files) >= 4

    def comments(path: Path) -> list[str]:
        return [e.comment for e in read_capture(path.read_bytes(), allow_truncated=False)
                if isinstance(e, PacketRecord) and e.comment]

    assert comments(files[0]) and "was tools/new" in comments(files[0])[0]
    # (the chunk a file ends in was encoded for the file before: its tail keeps its comments)
    for path in files[2:]:
        assert not comments(path), path
        assert "tools/new" in tshark_hosts(path)
    assert not pipe.names.reowned


class FullDisk:
    """A file whose every write fails as on a full disk (its header cannot go in)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by close())

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


def test_a_new_file_whose_header_does_not_fit_is_removed_not_left_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills just as a file starts: an empty file is no pcapng (capinfos rejects it),
    so it goes, and the error says the finished ones are intact."""
    from kubectl_zsniff.sinks import rotate

    real_open = rotate.open_output

    def open_output(path: Path, buffering: int = 0) -> Any:
        if path.name.endswith("-00003.pcapng"):
            return FullDisk(path), True
        return real_open(path, buffering=buffering)

    monkeypatch.setattr(rotate, "open_output", open_output)
    pipe, sink = rotated_capture(tmp_path, RotationOptions(size=20_000), [WEB])
    pipe.feed(encode_pcap_header(1) + numbered_stream(0, 200))
    assert pipe.failure is not None and pipe.failure.status == ExitStatus.OUTPUT_ERROR
    assert "the 2 finished files before it are intact" in pipe.failure.message
    assert "held no packet and was removed" in pipe.failure.message
    assert "free some space" in pipe.failure.hint
    files = sink.close().files
    assert [p.name for p in files] == ["web-00001.pcapng", "web-00002.pcapng"]
    assert not (tmp_path / "web-00003.pcapng").exists()
    for path in files:
        assert capinfos_packets(path) == len(sequence(path)) > 0
    assert [n for p in files for n in sequence(p)] == list(range(len(sequence(files[0])) +
                                                                 len(sequence(files[1]))))
