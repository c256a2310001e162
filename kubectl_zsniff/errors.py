"""One exception family for every failure a user can meet, each with a hint and an exit status."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit statuses. Each failure class has its own so scripts can tell them apart."""

    OK = 0
    ERROR = 1  # unexpected failure (a bug): reported with --debug for a traceback
    USAGE = 2  # bad flags or arguments (click's own convention)
    NOT_FOUND = 3  # pod, container or namespace missing
    POD_NOT_RUNNING = 4  # pod pending, succeeded or failed
    FORBIDDEN = 5  # RBAC denied a verb
    POD_SECURITY = 6  # PodSecurity admission rejected the debug container
    UNSUPPORTED = 7  # cluster lacks ephemeral containers
    IMAGE_PULL = 8  # capture image cannot be pulled
    START_TIMEOUT = 9  # capture container did not start in time
    BAD_FILTER = 10  # tcpdump rejected the filter
    CAPTURE_FAILED = 11  # tcpdump failed (interface, permission)
    UNREACHABLE = 12  # API server unreachable, TLS failure
    UNAUTHORIZED = 13  # credentials rejected
    STREAM_LOST = 14  # the exec stream was cut before tcpdump ended
    TOOL_MISSING = 15  # wireshark / zeek / tshark not installed
    OUTPUT_ERROR = 16  # cannot write the output (terminal, disk, permissions)
    READER_CLOSED = 17  # wireshark closed or the stdout reader went away
    LIMIT_REACHED = 0  # a packet/size/duration limit ended the capture: success
    INTERRUPTED = 130  # Ctrl-C / SIGINT
    TERMINATED = 143  # SIGTERM


class ZsniffError(Exception):
    """A failure the user can understand: one line, a hint, an exit status."""

    status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, hint: str = "", status: ExitStatus | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message
