"""Terminal view: one rich line per packet, decoded by tshark through pyshark, pod names from NRBs.

Two entries, each handed the rich Console it writes to:
- `view_file(path, console)` renders a saved pcap/pcapng (`kubectl zsniff view FILE`).
- `pipe_capture` + `render_packets` render a live pcapng stream: the view's child process
  (cli/view_child.py) that `kubectl_zsniff.sinks.view.ViewSink` starts, so that pyshark and
  tshark never sit on the capture path.

Why PSML (pyshark `only_summaries`) and not `use_json=True`:
tshark's JSON output has no columns, so no Info line; tshark computes the Info column only for
text/PSML output (`-T ek -e _ws.col.info` prints nothing in 4.0, and `-T json -e ...` yields a
shape pyshark's JSON parser rejects). PSML gives exactly the packet-list columns (time, source,
destination with NRB names under `-N n`, ports, protocol, length, Info) and, measured on
wikipedia.pcap x80, renders ~7,500 packets/s against ~4,000 for JSON. pyshark 0.6's PSML reader is
broken (issue 604: it re-reads the `<structure>` header on every call and throws the buffered
packets away); `_PsmlParser` below reads the header once. PSML also has no one-packet lag:
`</packet>` is written with its packet, while the JSON separator waits for the next packet.
`render_packets` still accepts full pyshark packets (JSON or PDML) for callers that have them.

pyshark is imported only inside functions: it costs ~0.3 s and the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from kubectl_zsniff.errors import ExitStatus, ZsniffError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

TimeFormat = Literal["relative", "absolute", "date"]

# tshark `-t` values for the Time column.
TSHARK_TIME = {"relative": "r", "absolute": "a", "date": "ad"}

# The packet-list columns tshark computes for us (`gui.column.format` pairs: title, format code).
# Titles are lowercase so pyshark's PacketSummary exposes them as attributes of the same name.
_COLUMNS = (
    ("no", "%m"),  # frame number: lines the rows up with the sink's skip markers
    ("time", "%t"),  # follows -t
    ("src", "%s"),  # network source, resolved: NRB name under -N n, else the address (or MAC)
    ("sport", "%S"),
    ("dst", "%d"),
    ("dport", "%D"),
    ("proto", "%p"),
    ("len", "%L"),
    ("info", "%i"),
)


def _plain_seconds(text: str) -> str:
    """Relative times with six decimals (tshark writes 0.0, 0.32109, 2.5e-05); wall-clock
    times, which are not plain numbers, as tshark wrote them."""
    try:
        return f"{float(text):.6f}"
    except (TypeError, ValueError):
        return str(text)


@dataclass(frozen=True)
class Row:
    """What one terminal line shows for one packet."""

    number: int
    time: str
    src: str
    src_port: str
    dst: str
    dst_port: str
    protocol: str
    length: int
    info: str


def tshark_parameters(
    time_format: TimeFormat = "relative", hosts_file: str | None = None
) -> list[str]:
    """tshark arguments for the view: NRB names on, DNS off, our columns, time format.

    pyshark always passes `-n`; a later `-N n` wins, turning on network names only (NRBs and
    hosts files) so MACs and ports stay raw.
    """
    column_format = ",".join(f'"{title}","{code}"' for title, code in _COLUMNS)
    params = [
        "-N",
        "n",
        "-o",
        "nameres.use_external_name_resolver:FALSE",
        "-o",
        f"gui.column.format:{column_format}",
        "-t",
        TSHARK_TIME[time_format],
    ]
    if hosts_file:
        params += ["-H", hosts_file]
    return params


def require_tshark() -> str:
    """The tshark path, or the project's error telling how to get it."""
    path = shutil.which("tshark")
    if path is None:
        raise ZsniffError(
            "tshark is not installed: the terminal view decodes packets with it",
            hint="install tshark (Debian/Ubuntu: apt-get install tshark; macOS: brew install "
            "wireshark)",
            status=ExitStatus.TOOL_MISSING,
        )
    return path


def check_display_filter(display_filter: str) -> None:
    """Raise the project's usage error if tshark rejects the display filter.

    Checked up front (~0.2 s, only when a filter is given) because pyshark reports tshark's exit
    only if it has been reaped by then: a rejected filter would otherwise race to an empty view.
    """
    from kubectl_zsniff.formats.pcap import encode_pcap_header

    result = subprocess.run(
        [require_tshark(), "-Y", display_filter, "-r", "-"],
        # An empty pcap (header only, Ethernet) is all tshark needs to check the filter.
        input=encode_pcap_header(1, 65535),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        lines = [
            line
            for line in result.stderr.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("Running as user")
        ]
        reason = lines[-1].removeprefix("tshark: ") if lines else f"exit {result.returncode}"
        raise ZsniffError(
            f"bad display filter {display_filter!r}: {reason}",
            hint="display filters use Wireshark syntax, e.g. 'tcp.port == 80 && udp'",
            status=ExitStatus.USAGE,
        )


@cache
def _capture_classes() -> tuple[type[Any], type[Any]]:
    """pyshark FileCapture/PipeCapture subclasses that read PSML correctly (built lazily)."""
    from pyshark.capture.file_capture import FileCapture
    from pyshark.capture.pipe_capture import PipeCapture
    from pyshark.tshark.output_parser import tshark_xml
    from pyshark.tshark.output_parser.base_parser import BaseTsharkOutputParser

    class _PsmlParser(tshark_xml.TsharkXmlParser):  # type: ignore[misc]  # pyshark: untyped
        """pyshark's PSML reader with the header read once (pyshark 0.6 re-reads it per packet)."""

        async def get_packets_from_stream(
            self, stream: Any, existing_data: bytes, got_first_packet: bool = True
        ) -> tuple[Any, bytes]:
            while getattr(self, "_psml_structure", None) is None:
                struct, rest = tshark_xml._extract_tag_from_xml_data(existing_data, b"structure")
                if struct:
                    self._psml_structure = tshark_xml.psml_structure_from_xml(struct)
                    existing_data = rest
                    break
                new_data = await stream.read(self.DEFAULT_BATCH_SIZE)
                if not new_data:
                    raise EOFError()
                existing_data += new_data
            # Skip TsharkXmlParser's override (the broken one), use the generic packet loop.
            result: tuple[Any, bytes] = await BaseTsharkOutputParser.get_packets_from_stream(
                self, stream, existing_data, got_first_packet=got_first_packet
            )
            return result

    class SummaryFileCapture(FileCapture):  # type: ignore[misc]
        def _setup_tshark_output_parser(self) -> Any:
            return _PsmlParser(parse_summaries=True)

    class SummaryPipeCapture(PipeCapture):  # type: ignore[misc]
        def _setup_tshark_output_parser(self) -> Any:
            return _PsmlParser(parse_summaries=True)

    return SummaryFileCapture, SummaryPipeCapture


def file_capture(
    path: str,
    display_filter: str | None = None,
    time_format: TimeFormat = "relative",
    hosts_file: str | None = None,
) -> Any:
    """A pyshark capture yielding packet summaries (rows) of a saved pcap/pcapng file."""
    require_tshark()
    file_cls, _ = _capture_classes()
    return file_cls(
        path,
        keep_packets=False,
        only_summaries=True,
        display_filter=display_filter,
        custom_parameters=tshark_parameters(time_format, hosts_file),
        eventloop=_event_loop(),
    )


def pipe_capture(
    fd: int,
    display_filter: str | None = None,
    time_format: TimeFormat = "relative",
    hosts_file: str | None = None,
) -> Any:
    """A pyshark capture yielding packet summaries of a pcap/pcapng stream read from fd."""
    require_tshark()
    _, pipe_cls = _capture_classes()
    return pipe_cls(
        fd,
        only_summaries=True,
        display_filter=display_filter,
        custom_parameters=tshark_parameters(time_format, hosts_file),
        eventloop=_event_loop(),
    )


def _event_loop() -> Any:
    """A loop for pyshark: after any asyncio.run() in this thread there is no current one,
    and pyshark's own asyncio.get_event_loop() then raises."""
    import asyncio

    try:
        return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop


def _field(layer: Any, *names: str) -> str:
    for name in names:
        try:  # JSON layers raise for a missing field, XML ones return None
            value = layer.get_field(name) if layer is not None else None
        except AttributeError:
            value = None
        if value is not None:
            return str(value)
    return ""


def row_from_packet(packet: Any) -> Row:
    """A Row from a pyshark packet: a PSML summary (ours) or a full JSON/PDML packet."""
    if hasattr(packet, "summary_line"):  # pyshark PacketSummary from our PSML columns
        return Row(
            number=int(getattr(packet, "no", 0) or 0),
            time=_plain_seconds(getattr(packet, "time", "")),
            src=getattr(packet, "src", ""),
            src_port=getattr(packet, "sport", ""),
            dst=getattr(packet, "dst", ""),
            dst_port=getattr(packet, "dport", ""),
            protocol=getattr(packet, "proto", ""),
            length=int(getattr(packet, "len", 0) or 0),
            info=getattr(packet, "info", ""),
        )
    # A full packet (use_json=True or PDML): tshark gives no Info column there, so the summary is
    # the highest layer's own fields we know; `_host` fields carry NRB names under -N n.
    net = None
    for name in ("ip", "ipv6", "arp"):
        if name in packet:
            net = packet[name]
            break
    if net is not None and net.layer_name == "arp":
        src = _field(net, "src_proto_ipv4", "src.proto_ipv4")
        dst = _field(net, "dst_proto_ipv4", "dst.proto_ipv4")
        info = "reply" if _field(net, "opcode") == "2" else f"Who has {dst}? Tell {src}"
    elif net is not None:
        src = _field(net, "src_host", "src")
        dst = _field(net, "dst_host", "dst")
        info = ""
    else:
        eth = packet["eth"] if "eth" in packet else None  # noqa: SIM401 - Packet has no .get
        src, dst, info = _field(eth, "src"), _field(eth, "dst"), ""
    sport = dport = ""
    for name in ("tcp", "udp"):
        if name in packet:
            transport = packet[name]
            sport, dport = _field(transport, "srcport"), _field(transport, "dstport")
            if name == "udp" and not info:
                info = f"{sport} → {dport} Len={_field(transport, 'length')}"
            if name == "tcp" and not info:
                info = (
                    f"{sport} → {dport} Flags={_field(transport, 'flags')} "
                    f"Seq={_field(transport, 'seq')} Len={_field(transport, 'len')}"
                )
            break
    return Row(
        number=int(packet.number or 0),
        time=str(getattr(packet, "sniff_timestamp", "")),
        src=src,
        src_port=sport,
        dst=dst,
        dst_port=dport,
        protocol=str(packet.highest_layer),
        length=int(packet.length or 0),
        info=info,
    )


@lru_cache(maxsize=4096)
def _address_version(text: str) -> int:
    """4 or 6 for an IP address, 0 for a name (NRB/hosts file), a MAC or nothing."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


_SRC_WIDTH = _DST_WIDTH = 28  # fits `namespace/pod-abcde:port` of typical length
_PROTOCOL_STYLES = {
    "TCP": "green",
    "UDP": "blue",
    "DNS": "magenta",
    "MDNS": "magenta",
    "HTTP": "yellow",
    "TLSv1.2": "bright_green",
    "TLSv1.3": "bright_green",
    "ARP": "red",
    "ICMP": "red",
    "ICMPv6": "red",
}


def _endpoint(host: str, port: str, width: int) -> list[tuple[str, str]]:
    version = _address_version(host)
    # A name (from an NRB or hosts file) stands out; a bare address (or MAC) does not.
    style = "bold cyan" if host and not version and host.count(":") != 5 else "dim"
    shown = f"[{host}]" if port and version == 6 else (host or "?")
    pieces = [(shown, style)]
    if port:
        pieces.append((":" + port, "dim"))
    used = len(shown) + (len(port) + 1 if port else 0)
    if used < width:
        pieces.append((" " * (width - used), ""))
    return pieces


def row_pieces(row: Row) -> list[tuple[str, str]]:
    """The line for a row as (text, rich style) pieces: time, src -> dst, protocol, length, info.

    One layout for both outputs: `format_row` (a rich Text) and the view's fast ANSI writer.
    """
    return [
        (f"{row.time:>10} ", "dim"),
        *_endpoint(row.src, row.src_port, _SRC_WIDTH),
        (" → ", ""),
        *_endpoint(row.dst, row.dst_port, _DST_WIDTH),
        (f" {row.protocol:<6}", _PROTOCOL_STYLES.get(row.protocol, "")),
        (f" {row.length:>5} ", ""),
        (row.info, ""),
    ]


def format_row(row: Row) -> Text:
    """One terminal line as rich Text."""
    from rich.text import Text

    line = Text(no_wrap=True, overflow="ellipsis")
    for text, style in row_pieces(row):
        line.append(text, style=style or None)
    return line


def skip_pieces(skipped: int) -> list[tuple[str, str]]:
    noun = "packet" if skipped == 1 else "packets"
    return [(f"… view skipped {skipped} {noun} to keep up", "yellow italic")]


def format_skip(skipped: int) -> Text:
    from rich.text import Text

    return Text.assemble(*skip_pieces(skipped))


class LineWriter:
    """Writes styled lines straight to the console's file.

    Console.print costs ~250 us a line (measured), more than tshark's decoding; this writer costs
    a few us: rich still decides colours (terminal detection, NO_COLOR, colour system) and renders
    each style once to ANSI, then lines are plain string joins, cropped to the console width.
    """

    def __init__(self, console: Console) -> None:
        from rich.color import ColorSystem

        systems = {
            "standard": ColorSystem.STANDARD,
            "256": ColorSystem.EIGHT_BIT,
            "truecolor": ColorSystem.TRUECOLOR,
            "windows": ColorSystem.STANDARD,
        }
        name = console.color_system
        self._system = None if name is None or console.no_color else systems.get(name)
        self._console = console
        self._width = console.width
        self._styles: dict[str, tuple[str, str]] = {}

    def _style(self, name: str) -> tuple[str, str]:
        codes = self._styles.get(name)
        if codes is None:
            from rich.style import Style

            codes = ("", "")
            if name and self._system is not None:
                before, _, after = (
                    Style.parse(name).render("\0", color_system=self._system).partition("\0")
                )
                codes = (before, after)
            self._styles[name] = codes
        return codes

    def write(self, pieces: list[tuple[str, str]]) -> None:
        from rich.cells import cell_len, set_cell_size

        room = self._width
        out: list[str] = []
        for text, style in pieces:
            size = cell_len(text)
            if size > room:
                text = set_cell_size(text, max(0, room - 1)) + "…" if room else ""
                size = room
            if text:
                before, after = self._style(style)
                out.append(before + text + after)
            room -= size
            if room <= 0:
                break
        out.append("\n")
        file = self._console.file
        file.write("".join(out))
        file.flush()  # a live view: each packet shows when it arrives


def render_packets(
    source: Iterable[Any],
    console: Console,
    *,
    count: int | None = None,
    skipped_before: Callable[[int], int] | None = None,
) -> int:
    """Print one line per pyshark packet of source; return how many lines were printed.

    skipped_before(frame_number) returns how many packets the capture dropped before that frame
    (and not yet reported); a note is printed in their place. A recording console (tests, export)
    gets rich Text through console.print; any other gets the fast writer.
    """
    writer = None if console.record else LineWriter(console)
    shown = 0
    for packet in source:
        if count is not None and shown >= count:
            break
        row = row_from_packet(packet)
        if skipped_before is not None:
            skipped = skipped_before(row.number)
            if skipped:
                if writer is None:
                    console.print(format_skip(skipped))
                else:
                    writer.write(skip_pieces(skipped))
        if writer is None:
            console.print(format_row(row), no_wrap=True, overflow="ellipsis", crop=True)
        else:
            writer.write(row_pieces(row))
        shown += 1
    return shown


def close_quietly(capture: Any) -> None:
    # tshark's exit status after we stopped reading early is not the user's problem.
    try:
        capture.close()
    except Exception:
        # pyshark keeps the failed process listed and would raise again from __del__.
        with contextlib.suppress(AttributeError):
            capture._running_processes.clear()


def require_capture_file(path: str) -> None:
    """Refuse, as `convert` does, a file that does not start as a pcap or pcapng capture
    (tshark would otherwise show one bogus row for it)."""
    from kubectl_zsniff.formats.pcap import PcapFormatError
    from kubectl_zsniff.formats.pcapng import CapturePushParser

    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError as exc:
        raise ZsniffError(f"cannot read {path}: {exc.strerror}", status=ExitStatus.USAGE) from exc
    try:
        if not head:
            raise PcapFormatError("the file is empty")
        list(CapturePushParser().feed(head))
    except PcapFormatError as exc:
        raise ZsniffError(
            f"{path} is not a pcap or pcapng capture: {exc.message}",
            hint="give a file written by zsniff, tcpdump -w, tshark -w or Wireshark",
            status=ExitStatus.USAGE,
        ) from exc


def view_file(
    path: str,
    console: Console,
    display_filter: str | None = None,
    count: int | None = None,
    time_format: TimeFormat = "relative",
    hosts_file: str | None = None,
) -> int:
    """Render a saved pcap/pcapng (names from its NRBs, plus hosts_file); return rows printed."""
    if not os.path.isfile(path):
        raise ZsniffError(f"{path}: no such file", "check the path of the capture",
                          status=ExitStatus.USAGE)
    if hosts_file is not None and not os.path.isfile(hosts_file):
        raise ZsniffError(f"{hosts_file}: no such hosts file", "check the path given to -H",
                          status=ExitStatus.USAGE)
    require_capture_file(path)
    if display_filter:
        check_display_filter(display_filter)
    with _whole_packets(path) as readable:
        return _render_file(path, readable, console, display_filter, count, time_format,
                            hosts_file)


@contextlib.contextmanager
def _whole_packets(path: str) -> Any:
    """The path tshark should read: the file itself, or (when it ends inside a packet) an
    owner-only copy of its whole packets. tshark fails on a cut tail ("appears to have been
    cut short"), and pyshark then raises while rows are still being printed."""
    from kubectl_zsniff.formats.pcapng import truncated_bytes

    tail = truncated_bytes(path)
    if not tail:
        yield path
        return
    import tempfile

    size = os.path.getsize(path) - tail
    with open(path, "rb") as src, tempfile.NamedTemporaryFile(
            prefix="zsniff-whole-", suffix=os.path.splitext(path)[1]) as copy:
        while size > 0:
            chunk = src.read(min(size, 1 << 20))
            if not chunk:
                break
            copy.write(chunk)
            size -= len(chunk)
        copy.flush()
        yield copy.name


def _render_file(path: str, readable: str, console: Console, display_filter: str | None,
                 count: int | None, time_format: TimeFormat, hosts_file: str | None) -> int:
    capture = file_capture(readable, display_filter, time_format, hosts_file)
    try:
        return render_packets(capture, console, count=count)
    except Exception as exc:
        if type(exc).__name__ == "TSharkCrashException":  # pyshark's; imported lazily
            last = getattr(capture, "_last_error_line", None) or str(exc)
            raise ZsniffError(
                f"tshark could not read {path}: {last}",
                hint="check the display filter (-Y) and that the file is pcap or pcapng",
                status=ExitStatus.USAGE,
            ) from exc
        raise
    finally:
        close_quietly(capture)
