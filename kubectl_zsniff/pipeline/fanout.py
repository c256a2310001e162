"""One write to every sink: each gets the format it takes; a sink whose reader left is dropped."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.options import OutputFormat
from kubectl_zsniff.sinks import ReaderClosed, ReaderStalled, Sink

_PCAP = OutputFormat.PCAP


class FanOut:
    def __init__(self, sinks: Sequence[Sink], *, note: Callable[[str], None],
                 failed: Callable[[ZsniffError], None], lost_all: Callable[[], None]) -> None:
        """`note`: a line for the summary; `failed`: a reader died of this failure;
        `lost_all`: a write found the last reader gone."""
        self.sinks = list(sinks)
        self.wants_pcap = any(s.fmt == OutputFormat.PCAP for s in self.sinks)
        self.wants_pcapng = any(s.fmt == OutputFormat.PCAPNG for s in self.sinks)
        self.closed_by_reader: list[str] = []  # labels, for the summary
        self._note = note
        self._failed = failed
        self._lost_all = lost_all

    def write(self, pcap: bytes | memoryview, pcapng: bytes | memoryview) -> int:
        """Hand each sink its bytes; return how many the first sink took (what --max-size and
        the summary count: one output, not the sum of copies)."""
        counted = 0
        for sink in list(self.sinks):
            data = pcap if sink.fmt == _PCAP else pcapng
            if not data:
                continue
            try:
                sink.write(data)
            except ReaderClosed as gone:
                if isinstance(gone, ReaderStalled):
                    self._note(gone.message)
                self._drop(sink)
                if not self.sinks:
                    self._lost_all()
                continue
            if sink is self.sinks[0]:
                counted += len(data)
        return counted

    def drop_gone_readers(self) -> bool:
        """Drop the sinks whose reader went away meanwhile; True when any was."""
        dropped = False
        for sink in list(self.sinks):
            if sink.reader_gone():
                self._drop(sink)
                dropped = True
        return dropped

    def stopping(self) -> None:
        for sink in list(self.sinks):
            sink.stopping()

    def _drop(self, sink: Sink) -> None:
        """The sink's reader went away: closed by the user, or dead of a failure it names."""
        self.sinks.remove(sink)
        err = sink.reader_failure()
        if err is not None:
            self._failed(err)
        else:
            self.closed_by_reader.append(sink.label)
