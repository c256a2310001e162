"""What each sink says when it closes: one type per kind of outcome, rendered by cli/console.py.

Plain data, no behaviour the capture depends on, and light to import (the console needs the
classes at start-up): the Zeek types it refers to are for annotations only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kubectl_zsniff.words import plural

if TYPE_CHECKING:
    from kubectl_zsniff.zeek.logs import FileSummary
    from kubectl_zsniff.zeek.select import SelectionCounts


class BytesWritten(int):
    """A sink whose only outcome is how much it took: a file, standard output, Wireshark."""


@dataclass
class RotationResult:
    """What a rotated capture left on disk."""

    files: list[Path]  # the files kept, oldest first
    removed: int  # files the ring removed
    bytes_written: int


@dataclass
class ZeekSummary:
    directory: Path
    returncode: int | None
    bytes_written: int
    files: list[FileSummary] = field(default_factory=list)
    json_lines: int | None = None  # lines of the --zeek-json stream (None: no stream)
    json_to: str | None = None
    counts: SelectionCounts | None = None  # kept/dropped rows per log, with a selection


@dataclass(frozen=True)
class ViewSummary:
    total_packets: int  # packet blocks handed to write()
    sent_packets: int  # packet blocks written (whole) to the view
    dropped_packets: int  # packet blocks the view never got (pipe full, or view gone)
    view_gone: bool  # the child exited or closed its input before we closed it
    exit_code: int | None  # the child's (negative: killed by that signal), None if still running

    def message(self) -> str | None:
        """The view's own account, None when nothing was skipped."""
        if self.view_gone:
            return (
                f"view ended early (exit {self.exit_code}); "
                f"it showed {self.sent_packets:,} of {plural(self.total_packets, 'packet')}"
            )
        if self.dropped_packets:
            total = plural(self.total_packets, "packet")
            return f"view skipped {self.dropped_packets:,} of {total}"
        return None


#: Every sink's close() returns one of these; the console renders each kind its own way.
SinkResult = BytesWritten | RotationResult | ZeekSummary | ViewSummary


@dataclass(frozen=True)
class ClosedSink:
    """One sink's outcome, under the name the summary gives it."""

    label: str
    result: SinkResult


__all__ = ["BytesWritten", "ClosedSink", "RotationResult", "SinkResult", "ViewSummary",
           "ZeekSummary"]
