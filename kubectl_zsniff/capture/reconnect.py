"""A pod's exec stream that drops mid-capture is reconnected: the old tcpdump is made sure to be
gone, a new one starts in the same capture container, and its packets continue the same
output after a marked gap.

Over hours a stream drops for reasons that are nobody's fault: a laptop's Wi-Fi, an API server
rolled by the provider, a kubelet restart, a proxy's idle timeout. Backoff is bounded by
`--reconnect-for`; an error that retrying cannot fix (the pod or its container gone, access
revoked) ends the capture at once, as a drop did before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from kubectl_zsniff.errors import ExitStatus, ZsniffError

if TYPE_CHECKING:
    from kubectl_zsniff.capture.run import PodStream

FIRST_DELAY = 0.5
MAX_DELAY = 10.0

#: Failures a later attempt may not meet: the network, the API server, the node restarting.
RETRIABLE = frozenset({ExitStatus.UNREACHABLE, ExitStatus.STREAM_LOST, ExitStatus.ERROR,
                       ExitStatus.CAPTURE_FAILED})


def backoff_delays(first: float = FIRST_DELAY, most: float = MAX_DELAY) -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 10, 10, ... seconds between attempts."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


def utc_clock(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S.%f")[:-3] + " UTC"


@dataclass
class Gap:
    """A stretch of a pod's capture during which no tcpdump was streaming to us."""

    pod: str
    lost_at: float  # wall clock, when the old stream's loss was seen
    why: str
    resumed_at: float | None = None  # when the new stream was up; None: never
    attempts: int = 0

    @property
    def comment(self) -> str:
        """The pcapng comment on the first packet after the gap."""
        assert self.resumed_at is not None
        return (f"zsniff: capture gap from {utc_clock(self.lost_at)} to "
                f"{utc_clock(self.resumed_at)} ({self.resumed_at - self.lost_at:.1f} s): "
                f"{self.why}; packets in it may be missing")

    @property
    def note(self) -> str:
        """The summary's line on it."""
        if self.resumed_at is None:
            return (f"gap from {utc_clock(self.lost_at)}: {self.why}; not reconnected "
                    f"({self.attempts} attempts)")
        return (f"gap from {utc_clock(self.lost_at)} to {utc_clock(self.resumed_at)} "
                f"({self.resumed_at - self.lost_at:.1f} s): {self.why}; reconnected after "
                f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}, packets in the "
                "gap may be missing (the file marks it on the next packet)")


class Reconnector:
    """Brings one pod's capture back after its stream dropped, for up to `reconnect_for`."""

    def __init__(self, reconnect_for: float) -> None:
        self.reconnect_for = reconnect_for
        self.gaps: list[Gap] = []
        self.last_error: ZsniffError | None = None

    async def resume(self, stream: PodStream, lost: ZsniffError) -> bool:
        """Reconnect `stream` (its old session is over). True: a new tcpdump streams into the
        same lane; False: the stop was asked for, the time is up, or retrying cannot help."""
        why = _reason(lost)
        gap = Gap(f"{stream.pod.namespace}/{stream.pod.name}", time.time(), why)
        self.gaps.append(gap)
        deadline = time.monotonic() + self.reconnect_for
        stream.reporter.progress(
            f"{stream.who()}stream lost ({why}); reconnecting for up to "
            f"{self.reconnect_for:g} s (--reconnect-for)")
        stream.reconnecting = True
        try:
            for delay in backoff_delays():
                if stream.stop.is_set():
                    return False
                gap.attempts += 1
                try:
                    if await self._attempt(stream):
                        gap.resumed_at = time.time()
                        stream.lane.resume_after_gap(gap.comment)
                        stream.reporter.progress(f"{stream.who()}reconnected: capturing again")
                        return True
                except ZsniffError as err:
                    self.last_error = err
                    if err.status not in RETRIABLE:
                        return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if await _stopped_within(stream.stop, min(delay, left)):
                    return False
            return False  # pragma: no cover - the delays never run out
        finally:
            stream.reconnecting = False

    async def _attempt(self, stream: PodStream) -> bool:
        """One try: the old tcpdump gone for sure, then a new session connected."""
        if stream.report.pid is not None:
            gone = await stream.verify_stopped([])
            if stream.container_gone:
                raise ZsniffError("the capture container is gone", "", ExitStatus.NOT_FOUND)
            if gone is not True:
                raise ZsniffError("could not make sure the old tcpdump is gone", "",
                                  ExitStatus.UNREACHABLE)
        stream.report.restart()
        stream.new_session()
        connect = asyncio.ensure_future(stream.session.connect())
        stop = asyncio.ensure_future(stream.stop.wait())
        try:
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not connect.done():
            connect.cancel()
            return False
        connect.result()  # raises what the handshake met
        return True


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


def _reason(err: ZsniffError) -> str:
    text = err.message
    # "the exec stream from ns/pod ended before the command did, after N bytes of output
    # (closed by the server)" reads better as its cause alone.
    start = text.rfind("(")
    if text.endswith(")") and start > 0:
        return "the stream ended: " + text[start + 1:-1]
    return text
