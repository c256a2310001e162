"""Capture files: exact bytes in order, owner-only, errors surfaced, nothing held back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kubectl_zsniff.errors import ExitStatus, ZsniffError
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


def test_existing_file_with_wide_permissions_becomes_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "old.pcap"
    out.write_bytes(b"old contents that must go")
    out.chmod(0o644)
    sink = FileSink(out, "pcap")
    sink.write(b"new")
    sink.close()
    assert out.read_bytes() == b"new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_full_disk_is_a_clear_output_error() -> None:
    sink = FileSink(Path("/dev/full"), "pcap")
    with pytest.raises(ZsniffError) as caught:
        for _ in range(100):  # the error comes back with a later write, or at close
            sink.write(b"\0" * 65536)
        sink.close()
    assert caught.value.status == ExitStatus.OUTPUT_ERROR
    assert "No space left on device" in caught.value.message
    assert "free some space" in caught.value.hint
