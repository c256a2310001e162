"""A whole CaptureRun against scripted exec streams (tests/unit/fake_exec.py): the packets in
the file, the exit status, the notes, and what the pod's tcpdump was told, with no cluster."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from kubectl_zsniff.capture.run import CaptureRun, CaptureSummary, StopReason
from kubectl_zsniff.errors import ExitStatus
from kubectl_zsniff.formats.pcapng import PacketRecord, read_capture
from kubectl_zsniff.kube.pod import CapturePlace, PodInfo
from kubectl_zsniff.kube.scripts import NO_POD_PROCESS_EXIT
from kubectl_zsniff.options import CaptureLimits, TcpdumpOptions
from kubectl_zsniff.pipeline.output import OutputPipeline
from kubectl_zsniff.sinks.file import FileSink
from tests.unit.fake_exec import (
    PCAP_HEADER,
    Call,
    Drop,
    Exit,
    FakeConnector,
    Stderr,
    Stdout,
    UntilStopped,
    packets,
    tcpdump_end,
    tcpdump_start,
)

WEB = PodInfo("shop", "web-1", "node-a", ("app",), "Running", ("10.244.1.1",))


class Said:
    """The Reporter: what the user would read on stderr."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def progress(self, message: str) -> None:
        self.lines.append(message)

    def stats(self, packets: int, data_bytes: int, elapsed: float, dropped: int | None = None,
              reconnecting: int = 0) -> None:
        pass


def capture(tmp_path: Path, connector: FakeConnector, *, tcpdump: TcpdumpOptions | None = None,
            limits: CaptureLimits | None = None, reconnect_for: float = 0.0,
            pod: PodInfo = WEB) -> tuple[CaptureSummary, list[int], Said]:
    """Run the capture into a pcapng file; the numbers of the packets in it."""
    tcpdump = tcpdump or TcpdumpOptions()
    limits = limits or CaptureLimits()
    path = tmp_path / "out.pcapng"
    sink = FileSink(path, "pcapng")
    said = Said()
    pipeline = OutputPipeline([sink], pod, "zsniff-a", "ctx", tcpdump, limits, None)
    run = CaptureRun(None, pipeline, tcpdump, limits, said, reconnect_for, connector=connector)
    summary = asyncio.run(asyncio.wait_for(run.run(), 60))
    sink.close()
    records = [e for e in read_capture(path.read_bytes(), allow_truncated=False)
               if isinstance(e, PacketRecord)]
    return summary, [int.from_bytes(r.data[42:46], "big") for r in records], said


def test_count_writes_that_many_packets_and_stops_tcpdump(tmp_path: Path) -> None:
    connector = FakeConnector([[
        *tcpdump_start(pid=12), Stdout(PCAP_HEADER + packets(range(10))),
        UntilStopped(), *tcpdump_end(10)]])
    summary, numbers, said = capture(tmp_path, connector, limits=CaptureLimits(packet_count=4))
    assert numbers == [0, 1, 2, 3]
    assert summary.reason is StopReason.PACKET_LIMIT
    assert summary.exit_status == ExitStatus.LIMIT_REACHED and summary.error is None
    assert summary.packets == 4 and summary.pods[0].packets == 4
    assert connector.tcpdump_argv[0][-2:] == ["-c", "4"]  # tcpdump's own limit too
    assert connector.events == ["connect", "stdin closed"]
    assert summary.remote_stopped is True  # checked gone: kill -0 answered no such process
    assert ["kill -0 \"$1\" 2>/dev/null", "12"] in connector.commands
    assert "tcpdump listening on eth0, link-type EN10MB (Ethernet), " \
           "snapshot length 262144 bytes" in said.lines


def test_a_stream_cut_mid_packet_is_reconnected_with_the_gap_noted(tmp_path: Path) -> None:
    first = PCAP_HEADER + packets(range(4))
    connector = FakeConnector([
        [*tcpdump_start(pid=12), Stdout(first[:-9]), Drop()],  # cut inside packet 3
        [*tcpdump_start(pid=30), Stdout(PCAP_HEADER + packets(range(10, 20))),
         UntilStopped(), *tcpdump_end(10)],
    ])
    summary, numbers, said = capture(tmp_path, connector, limits=CaptureLimits(packet_count=6),
                                     reconnect_for=30)
    assert numbers == [0, 1, 2, 10, 11, 12]  # the torn packet is left out, not half-written
    assert summary.exit_status == ExitStatus.LIMIT_REACHED and summary.error is None
    # The old tcpdump was made sure to be gone before a new one started; the new one is told
    # what is left of the limit.
    assert connector.commands[0] == ["kill -0 \"$1\" 2>/dev/null", "12"]
    assert connector.tcpdump_argv[1][-2:] == ["-c", "3"]
    gap_notes = [n for n in summary.notes if n.startswith("gap from ")]
    assert len(gap_notes) == 1, summary.notes
    assert "the stream ended: closed by the server" in gap_notes[0]
    assert "reconnected after 1 attempt" in gap_notes[0]
    assert any("stream lost (the stream ended: closed by the server); reconnecting for up to "
               "30 s" in line for line in said.lines), said.lines
    assert "reconnected: capturing again" in said.lines
    assert connector.events == ["connect", "connect", "stdin closed"]


def test_a_cut_stream_without_reconnect_is_stream_lost_with_the_packets_kept(
        tmp_path: Path) -> None:
    stream = PCAP_HEADER + packets(range(4))
    connector = FakeConnector([[*tcpdump_start(pid=12), Stdout(stream[:-9]), Drop()]])
    summary, numbers, _ = capture(tmp_path, connector)
    assert numbers == [0, 1, 2]
    assert summary.exit_status == ExitStatus.STREAM_LOST
    assert summary.error is not None
    assert "lost the connection to the API server after 3 packets" in summary.error.message
    assert "--reconnect-for" in summary.error.hint


def test_tcpdump_that_cannot_open_the_interface_is_a_capture_failure(tmp_path: Path) -> None:
    connector = FakeConnector([[
        Stderr(b"zsniff-pid 12\n"),
        Stderr(b"tcpdump: eth9: No such device exists\n(SIOCGIFHWADDR: No such device)\n"),
        Exit(1)]])
    summary, numbers, _ = capture(tmp_path, connector, tcpdump=TcpdumpOptions(interface="eth9"),
                                  reconnect_for=30)
    assert numbers == []
    assert summary.exit_status == ExitStatus.CAPTURE_FAILED
    assert summary.error is not None
    assert summary.error.message.startswith("tcpdump cannot open interface 'eth9': eth9: No "
                                            "such device exists")
    assert "kubectl exec -n shop web-1 -c zsniff-a -- ip link" in summary.error.hint
    assert connector.events == ["connect"]  # tcpdump's own failure is not retried


@pytest.mark.parametrize("stdin_close", [True, False], ids=["v5-stdin-closed", "v4-killed"])
def test_ctrl_c_stops_tcpdump_in_the_pod_and_keeps_its_last_packets(
        tmp_path: Path, stdin_close: bool) -> None:
    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    connector = FakeConnector([[
        *tcpdump_start(pid=12), Stdout(PCAP_HEADER + packets(range(5))), Call(ctrl_c),
        UntilStopped(),
        Stdout(packets(range(5, 7))),  # what tcpdump still held when it was told to stop
        *tcpdump_end(7)]], stdin_close=stdin_close)
    summary, numbers, _ = capture(tmp_path, connector)
    assert numbers == list(range(7))
    assert summary.reason is StopReason.INTERRUPTED
    assert summary.exit_status == ExitStatus.INTERRUPTED == 130
    assert summary.error is None
    # v5 closes tcpdump's stdin; v4 cannot, so tcpdump is sent SIGTERM.
    assert connector.events == ["connect", "stdin closed" if stdin_close else "kill -TERM 12"]
    assert summary.remote_stopped is True


VIA_NODE = replace(WEB, uid="0d1e2f", via=CapturePlace("zsniff", "zsniff-node-a", "capture"))


def test_a_pod_captured_via_its_node_is_streamed_and_checked_in_the_capture_pod(
        tmp_path: Path) -> None:
    connector = FakeConnector([[
        *tcpdump_start(pid=12), Stdout(PCAP_HEADER + packets(range(3))),
        UntilStopped(), *tcpdump_end(3)]])
    summary, numbers, _ = capture(tmp_path, connector, limits=CaptureLimits(packet_count=3),
                                  pod=VIA_NODE)
    assert numbers == [0, 1, 2] and summary.exit_status == ExitStatus.LIMIT_REACHED
    stream = connector.streams[0]
    assert stream.command[:3] == ["zsniff", "zsniff-node-a", "capture"]
    assert "0d1e2f" in stream.command  # tcpdump enters the captured pod's network namespace
    assert connector.command_places == [("zsniff", "zsniff-node-a", "capture")]
    assert summary.remote_stopped is True


def test_a_pod_whose_processes_left_its_node_is_not_running(tmp_path: Path) -> None:
    connector = FakeConnector([[
        Stderr(b"zsniff-pid 12\n"),
        Stderr(b"zsniff: no process of pod 0d1e2f on this node\n"), Exit(NO_POD_PROCESS_EXIT)]])
    summary, numbers, _ = capture(tmp_path, connector, pod=VIA_NODE)
    assert numbers == []
    assert summary.exit_status == ExitStatus.POD_NOT_RUNNING
    assert summary.error is not None
    assert summary.error.message.startswith("no process of pod shop/web-1 runs on node node-a")
