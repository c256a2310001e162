"""Capture files and pipes: exact bytes in order, owner-only, errors surfaced, nothing held
back, and a reader that stopped reading never holds a stopping capture."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from kubectl_zsniff import sinks
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.sinks import PipeWriter, ReaderStalled
from kubectl_zsniff.sinks.file import FileSink


def test_blocks_land_in_order_even_when_the_callers_buffer_is_reused(tmp_path: Path) -> None:
    """The stream hands out views of one reused read buffer: the file must hold what the
    view showed at the time of the write, not what the buffer holds later."""
    out = tmp_path / "c.pcap"
    sink = FileSink(out, "pcap")
    buffer = bytearray(32 * 1024)
    view = memoryview(buffer)
    expected = bytearray()
    for i in range(300):
        block = os.urandom(1000 + i * 37 % 20000)
        buffer[: len(block)] = block
        sink.write(view[: len(block)])
        expected += block
        buffer[: len(block)] = b"\xee" * len(block)  # reused at once
    sink.write(b"tail")
    expected += b"tail"
    assert sink.close() == len(expected)
    assert out.read_bytes() == bytes(expected)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_each_write_is_in_the_file_at_once(tmp_path: Path) -> None:
    out = tmp_path / "c.pcapng"
    sink = FileSink(out, "pcapng")
    sink.write(b"x" * 5_000_000)
    assert out.stat().st_size == 5_000_000  # readable by tshark -r while capturing
    sink.close()


def test_new_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "new.pcap"
    old_umask = os.umask(0)
    try:
        sink = FileSink(out, "pcap")
    finally:
        os.umask(old_umask)
    sink.write(b"x")
    sink.close()
    assert sink.created
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_existing_file_is_overwritten_but_keeps_its_mode(tmp_path: Path) -> None:
    """Only a file zsniff created gets its mode set (issue 9, defect 11)."""
    out = tmp_path / "old.pcap"
    out.write_bytes(b"old contents that must go")
    out.chmod(0o640)
    sink = FileSink(out, "pcap")
    sink.write(b"new")
    sink.close()
    assert out.read_bytes() == b"new"
    assert not sink.created
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    sink.discard_if_empty()
    assert out.exists()


def test_created_file_left_empty_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "nothing.pcapng"
    sink = FileSink(out, "pcapng")
    sink.discard_if_empty()
    assert not out.exists()


def test_existing_empty_file_is_not_removed(tmp_path: Path) -> None:
    out = tmp_path / "was-here.pcapng"
    out.touch()
    sink = FileSink(out, "pcapng")
    sink.discard_if_empty()
    assert out.exists()


needs_mknod = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of device nodes needs root")


def _char_device(path: Path, minor: int) -> Path:
    """A character device node of the memory driver (1,3 null; 1,7 full), mode 0666."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    path.chmod(0o666)
    return path


@needs_mknod
def test_device_keeps_its_mode_and_its_existence(tmp_path: Path) -> None:
    """`-w /dev/null` as root left /dev/null 0600; a failed `-w /dev/full` removed the node."""
    null = _char_device(tmp_path / "null", 3)
    sink = FileSink(null, "pcap")
    sink.write(b"x" * 1000)
    sink.close()
    assert stat.S_ISCHR(null.stat().st_mode)
    assert stat.S_IMODE(null.stat().st_mode) == 0o666
    full = _char_device(tmp_path / "full", 7)
    sink = FileSink(full, "pcap")
    sink.discard_if_empty()  # what a capture that wrote nothing does
    assert stat.S_ISCHR(full.stat().st_mode)
    assert stat.S_IMODE(full.stat().st_mode) == 0o666


def test_fifo_keeps_its_existence(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    fifo.chmod(0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = FileSink(fifo, "pcap")
        sink.discard_if_empty()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert stat.S_IMODE(fifo.stat().st_mode) == 0o644


@needs_mknod
def test_full_disk_is_a_clear_output_error(tmp_path: Path) -> None:
    sink = FileSink(_char_device(tmp_path / "full", 7), "pcap")
    with pytest.raises(ZsniffError) as caught:
        for _ in range(100):  # the error comes back with a later write, or at close
            sink.write(b"\0" * 65536)
        sink.close()
    assert caught.value.status == ExitStatus.OUTPUT_ERROR
    assert "No space left on device" in caught.value.message
    assert "free some space" in caught.value.hint


def test_pipe_writer_waits_for_a_slow_reader_and_delivers_everything() -> None:
    read_end, write_end = os.pipe()
    writer = PipeWriter(write_end, "test reader")
    payload = os.urandom(3_000_000)  # ~45 times a pipe's capacity
    received = bytearray()

    def slow_reader() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)
            time.sleep(0.001)

    thread = threading.Thread(target=slow_reader)
    thread.start()
    writer.write(payload)
    writer.restore()
    os.close(write_end)
    thread.join(30)
    os.close(read_end)
    assert bytes(received) == payload


def test_pipe_writer_gives_up_on_a_stuck_reader_only_once_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "STALLED_READER_SECONDS", 0.3)
    read_end, write_end = os.pipe()  # never read
    writer = PipeWriter(write_end, "the stuck reader")
    assert not os.get_blocking(write_end)
    done: list[BaseException] = []

    def write() -> None:
        try:
            writer.write(b"x" * 1_000_000)
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not done  # capturing: a full pipe is waited for
    writer.stopping()
    thread.join(5)
    assert len(done) == 1 and isinstance(done[0], ReaderStalled)
    assert "the stuck reader stopped reading" in str(done[0])
    writer.restore()
    assert os.get_blocking(write_end)  # handed back as it came
    os.close(read_end)
    os.close(write_end)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_leaves_the_file_on_its_last_whole_write(tmp_path: Path) -> None:
    """Each write is whole packets; the disk fills in the middle of one: what it got of that
    write is cut off, so the file ends where a packet ends."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "zsniff-unit-full", str(disk)],
                   check=True)
    try:
        sink = FileSink(disk / "c.pcapng", "pcapng")
        block = b"\xab" * 10_000
        with pytest.raises(ZsniffError) as caught:
            for _ in range(100):
                sink.write(block)
        assert caught.value.status == ExitStatus.OUTPUT_ERROR
        assert "No space left" in caught.value.message
        assert "up to the last whole one" in caught.value.message
        assert caught.value.hint.startswith("free some space")
        sink.close()
        size = (disk / "c.pcapng").stat().st_size
        assert size == sink.bytes_written and size % len(block) == 0 and size > 0, size
    finally:
        subprocess.run(["umount", str(disk)], check=True)
