"""Where captured bytes go. Every sink takes whole pcap records or pcapng blocks, never a torn one.

A sink raises ``ReaderClosed`` when its reader went away (Wireshark closed, `head` exited): the
capture then stops cleanly. Other failures are ``ZsniffError``s.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ExitStatus, ZsniffError


class ReaderClosed(ZsniffError):
    status = ExitStatus.READER_CLOSED


class Sink(Protocol):
    #: "pcap" for tcpdump's classic stream passed through untouched, "pcapng" for ours.
    fmt: str
    label: str

    #: ``data`` may be a memoryview into the received frame: use or copy it before returning.
    def write(self, data: bytes | memoryview) -> None: ...

    def close(self) -> Any: ...
