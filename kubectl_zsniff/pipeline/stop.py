"""Why a capture stopped: the one list, for the summary and the exit status."""

from __future__ import annotations

from enum import Enum


class StopReason(str, Enum):
    FINISHED = "tcpdump finished"
    PACKET_LIMIT = "packet limit reached"
    DURATION = "duration reached"
    SIZE_LIMIT = "size limit reached"
    INTERRUPTED = "interrupted (Ctrl-C)"
    TERMINATED = "terminated (SIGTERM)"
    READER_CLOSED = "the reader went away"
    STREAM_LOST = "the connection was lost"
    OUTPUT_FAILED = "writing the output failed"
