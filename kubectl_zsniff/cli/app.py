"""Command line: flags in, Options out, errors rendered once. Keep imports here light: --help
must stay fast, so the kubernetes client, rich and pyshark load only when a command runs."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kubectl_zsniff import __version__
from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.options import (
    DEFAULT_BUFFER_KIB,
    DEFAULT_IMAGE,
    DEFAULT_SNAPLEN,
    CaptureLimits,
    CaptureOptions,
    InjectOptions,
    KubeOptions,
    OutputFormat,
    OutputOptions,
    RotationOptions,
    TargetOptions,
    TcpdumpOptions,
)
from kubectl_zsniff.words import plural

if TYPE_CHECKING:
    from kubectl_zsniff.cli.console import ConsoleReporter
    from kubectl_zsniff.names.map import NameSource, PodName
    from kubectl_zsniff.zeek.select import RowSelection

CAPTURE_EXAMPLES = """
\b
Examples:
  # Capture a pod into a pcapng file with pod names inside; stop with Ctrl-C
  kubectl zsniff web-7d4b9 -n shop -w web.pcapng
\b
  # Only DNS, 30 seconds, then read it with names
  kubectl zsniff web-7d4b9 -n shop -d 30s -w dns.pcapng port 53
  tshark -r dns.pcapng -N n
\b
  # Live in Wireshark (names on), or in the terminal
  kubectl zsniff web-7d4b9 --wireshark
  kubectl zsniff web-7d4b9 --view
\b
  # Pipe to another tool; classic pcap for old readers
  kubectl zsniff web-7d4b9 -w - | tshark -r - -N n
  kubectl zsniff web-7d4b9 --format pcap -w - | tcpdump -r -
\b
  # Zeek on the live stream, logs enriched with orig_pod/resp_pod
  kubectl zsniff web-7d4b9 --zeek ./zeek-logs
\b
Offline: kubectl zsniff view FILE | convert IN OUT | hosts | enrich LOG...
"""

# h, m, s (or a bare number), ms: `5m` is minutes, `5ms` milliseconds.
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?"
                       r"(?:(\d+(?:\.\d+)?)(?:s|$))?(?:(\d+(?:\.\d+)?)ms)?$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1h30m`, `1.5s`, `250ms` -> seconds (kubectl's --request-timeout
    style)."""
    match = _DURATION.match(text.strip())
    if not match or not text.strip():
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 1h)")
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_size(text: str) -> int:
    """`1000`, `10k`, `100M`, `1G`, `64MiB` -> bytes (k/M/G are powers of 1000, Ki/Mi of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 100M, 1G, 64MiB)")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * ((1024 if binary else 1000) ** power))


# click.ParamType is generic from click 8.2 on; subscripting it would fail on 8.1 at import.
class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Size(click.ParamType):  # type: ignore[type-arg]
    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _RotateSize(_Size):
    """tcpdump's -C: a bare number is millions of bytes, as in tcpdump; units as --max-size."""

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip()) * 1_000_000
        return super().convert(value, param, ctx)


DURATION = _Duration()
SIZE = _Size()
ROTATE_SIZE = _RotateSize()
OFFLINE_COMMANDS = ("view", "convert", "hosts", "enrich")  # and `leftovers`: not capturing


class _CaptureContext(click.Context):
    """Capturing is the default command: its usage and errors read `kubectl zsniff POD`."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent is not None else super().command_path


class _CaptureCommand(click.Command):
    context_class = _CaptureContext


class ZsniffGroup(click.Group):
    """`kubectl zsniff POD ...` captures; `kubectl zsniff view|convert|hosts|enrich` are offline.

    A pod named like a subcommand is reached as pod/NAME.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        wants_help = any(a in ("--help", "-h") for a in args)
        if (
            not (wants_help and first is None)
            and not ("--version" in args and first is None)
            and (first is None or first not in self.commands)
        ):
            args = ["capture", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        capture_cmd = self.commands["capture"]
        with click.Context(capture_cmd, info_name=ctx.info_name, parent=None) as sub:
            capture_cmd.format_help(sub, formatter)


@click.group(
    cls=ZsniffGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=False,
)
@click.version_option(
    __version__, "--version", prog_name="kubectl-zsniff", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Capture a Kubernetes pod's traffic with pod names inside the capture."""


def _kube_options(func: Any) -> Any:
    decorators = [
        click.option("-n", "--namespace", help="Namespace of the pod (default: the context's)."),
        click.option(
            "--kubeconfig",
            type=click.Path(dir_okay=False),
            help="Path of the kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
        ),
        click.option("--context", help="The kubeconfig context to use."),
        click.option(
            "--request-timeout",
            type=DURATION,
            default=None,
            help="Timeout of each API request, e.g. 30s.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@cli.command(
    "capture",
    epilog=CAPTURE_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_CaptureCommand,
)
@click.argument("words", nargs=-1, metavar="POD|KIND/NAME [KIND/NAME...] [BPF FILTER...]")
@_kube_options
@click.option(
    "-l",
    "--selector",
    default=None,
    help="Capture every running pod matching this label selector, in one file.",
)
@click.option("-A", "--all-namespaces", is_flag=True, help="With -l: look in every namespace.")
@click.option(
    "--max-pods",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Refuse to capture more pods than this at once.",
)
@click.option(
    "--skip-uncapturable",
    is_flag=True,
    help="With several pods: capture those that can be, skip (and name) those PodSecurity "
    "forbids, instead of refusing them all.",
)
@click.option("-c", "--container", help="Container whose network to capture (default: first).")
@click.option(
    "-i",
    "--interface",
    default=None,
    help="Interface inside the pod (default eth0; `any` adds loopback, LINUX_SLL2 link "
    "type); for node/NAME the node's (default any: every interface of the node).",
)
@click.option(
    "-f",
    "--filter",
    "bpf_filter",
    default="",
    help="BPF capture filter (or give it as trailing words).",
)
@click.option(
    "-s",
    "--snaplen",
    type=click.IntRange(0, 262144),
    default=DEFAULT_SNAPLEN,
    show_default=True,
    help="Bytes kept of each packet (tcpdump -s).",
)
@click.option(
    "-B",
    "--buffer-size",
    "buffer_kib",
    type=click.IntRange(256, 1 << 20),
    default=DEFAULT_BUFFER_KIB,
    show_default=True,
    help="Kernel capture buffer in KiB (tcpdump -B); raise it if packets are dropped.",
)
@click.option(
    "--compress",
    is_flag=True,
    help="Gzip the stream in the pod (the image's busybox gzip and dd), decompress here: for an "
    "API server link slower than the pod's traffic, when that traffic compresses (JSON, plain "
    "HTTP: ~8x; TLS or random payloads: ~1.04x, no gain). The pod pays (its capture "
    "container's CPU counts against the pod): ~0.05 CPU s per MB of pcap under a flood, ~0.11 "
    "at 2 MB/s; where the node gives containers 8 KiB pipes ~0.25, and it then keeps only "
    "~0.6-1.7 MB/s, less in a BestEffort pod on a busy node: then it loses to plain "
    "capture over a 20 Mbit/s link (0.14x measured), as it does without spare CPU in the "
    "pod. Packets are delayed a few ms "
    "(bench/RESULTS.md).",
)
@click.option(
    "--count",
    "packet_count",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many packets.",
)
@click.option(
    "-d", "--duration", type=DURATION, default=None, help="Stop after this long, e.g. 30s, 5m."
)
@click.option(
    "--max-size",
    type=SIZE,
    default=None,
    help="Stop before the output grows past this size, e.g. 100M.",
)
@click.option(
    "-C", "--rotate-size", type=ROTATE_SIZE, default=None,
    help="Start a new -w file before one passes this size (tcpdump -C: a bare number is "
         "millions of bytes; or 100M, 1GiB). Files are FILE-00001.pcapng, FILE-00002...",
)
@click.option(
    "-G", "--rotate-every", type=DURATION, default=None,
    help="Start a new -w file when one is this old, at its next packet, e.g. 15m.",
)
@click.option(
    "-W", "--ring", type=click.IntRange(1), default=None,
    help="With -C or -G: keep only the last N files (the oldest is removed).",
)
@click.option(
    "--reconnect-for", type=DURATION, default=300.0,
    help="When a pod's stream drops, reconnect (with backoff) for up to this long; the gap is "
         "marked in the file. 0: do not reconnect (exit 14).  [default: 5m]",
)
@click.option(
    "-w",
    "--write",
    "write_path",
    metavar="FILE|-",
    default=None,
    help="Write to FILE (.pcapng by default, .pcap for classic) or - for stdout.",
)
@click.option(
    "--output-file",
    "write_path_alias",
    metavar="FILE|-",
    default=None,
    hidden=True,
    help="ksniff's name for -w.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing -w FILE (refused otherwise).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pcapng", "pcap"]),
    default=None,
    help="Format of the -w output (default: from the file name, else pcapng).",
)
@click.option("--wireshark", is_flag=True, help="Open a live Wireshark with pod names on.")
@click.option("--wireshark-path", default=None, help="Path of the Wireshark executable.")
@click.option(
    "--zeek",
    "zeek_dir",
    default=None,
    is_flag=False,
    flag_value="zeek-logs",
    metavar="[DIR]",
    help="Run local Zeek on the stream; logs (named) in DIR.",
)
@click.option("--zeek-script", multiple=True, help="Extra Zeek script or option (repeatable).")
@click.option("--zeek-json", metavar="FILE|-", default=None,
              help="Zeek's rows as one JSON-lines stream (with pod names) for a SIEM shipper.")
@click.option("--zeek-logs", metavar="conn,dns,...", default=None,
              help="Only these Zeek logs in DIR and the stream.")
@click.option("--zeek-only", multiple=True, metavar="RULE",
              help="Only flows matching RULE (repeatable, any may match): leaves-namespace, "
              "unknown, workload=NAME, namespace=NS.")
@click.option("--view", is_flag=True, help="Show packets in the terminal with pod names.")
@click.option("--no-names", is_flag=True, help="Do not look up pod, service and node names.")
@click.option(
    "--image",
    "--tcpdump-image",
    default=DEFAULT_IMAGE,
    show_default=True,
    help="Image of the capture container (needs sh and tcpdump).",
)
@click.option(
    "--via-node",
    is_flag=True,
    help="Capture the pods from a capture pod on their node, inside each pod's network "
    "namespace, leaving the pods unchanged: for pods that may not capture themselves "
    "(PodSecurity restricted). The capture pod (hostPID, SYS_ADMIN, SYS_PTRACE, NET_RAW, "
    "NET_ADMIN) is made in --capture-namespace and deleted afterwards.",
)
@click.option(
    "--capture-namespace",
    default=None,
    help="node/NAME and --via-node: where the capture pod is made (default: the context's "
    "namespace); it must allow host namespaces and capabilities (PodSecurity privileged).",
)
@click.option(
    "--privileged", is_flag=True, help="Run the capture container privileged (only if you must)."
)
@click.option(
    "--no-promiscuous",
    is_flag=True,
    help="Do not put the interface in promiscuous mode (tcpdump -p).",
)
@click.option(
    "--start-timeout",
    "--pod-creation-timeout",
    type=DURATION,
    default=120.0,
    help="How long to wait for the capture container, e.g. 2m.  [default: 2m]",
)
@click.option(
    "--idle-lifetime",
    type=DURATION,
    default=600.0,
    help="The capture container exits this long after its last capture. [default: 10m]",
)
@click.option(
    "--reorder-window",
    type=DURATION,
    default=0.25,
    help="Several pods: write packets in time order, holding each up to this long for the "
    "other pods' streams (0: as they arrive).  [default: 250ms]",
)
@click.option(
    "--dedup/--no-dedup",
    default=None,
    help="Several pods: write a packet seen leaving one captured pod and entering another "
    "once (the summary counts the copies dropped). On by default with --zeek/--zeek-json "
    "(Zeek would count each such packet twice), off otherwise (both timestamps show the "
    "latency between the pods).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.version_option(
    __version__, "--version", prog_name="kubectl-zsniff", message="%(prog)s %(version)s",
    help="Show the version and exit.",
)
def capture_command(**kw: Any) -> None:
    """Capture the traffic of POD (or pod/POD, NS/POD, deploy/NAME, sts/, ds/, rs/, job/,
    svc/NAME: their pods) into a pcapng file, stdout, Wireshark, Zeek or the terminal. Pod,
    service and node addresses appear as their names."""
    opts = build_capture_options(**kw)
    # The terminal view prints rows on the same terminal: no live status line over them.
    reporter = _make_reporter(kw["quiet"], live=not opts.output.view)
    status = _run(lambda: _capture(opts, reporter), kw["debug"], reporter)
    sys.exit(status)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Words a BPF expression can start with (pcap-filter(7)); with -l the trailing words are the
# filter, so a word that is none of these is a pod named by mistake (`web -l app=web`).
_BPF_WORDS = """
    dst src host ether gateway net port portrange less greater ip ip6 proto protochain
    broadcast multicast vlan mpls pppoed pppoes geneve vxlan iso ifname on rnr rulenum reason
    rset ruleset srnr subrulenum action type subtype dir wlan tcp udp icmp icmp6 igmp igrp pim
    ah esp vrrp sctp arp rarp atalk aarp decnet lat sca moprc mopdl stp ipx netbeui llc clnp
    esis isis l1 l2 iih lsp snp csnp psnp not and or inbound outbound fddi tr link radio ppp
    slip len ra ta addr1 addr2 addr3 addr4 hdlc carp heartbeat
"""
BPF_FIRST_WORDS = frozenset(_BPF_WORDS.split())


def _names_a_target(word: str) -> bool:
    """`pod/NAME`, `NS/NAME`, `deploy/NAME`, `svc/NAME`... rather than a filter word."""
    from kubectl_zsniff.kube.targets import is_kind_word

    prefix, _, name = word.partition("/")
    return bool(name) and (_DNS_LABEL.match(prefix) is not None or is_kind_word(prefix))


class TargetUsageError(click.UsageError):
    """A target word zsniff cannot read: its own hint instead of `see --help`."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def split_targets(words: list[str], selector: str | None) -> tuple[list[str], list[str]]:
    """(targets, filter words): the first word is a target (unless -l is given), then
    KIND/NAME or NS/NAME words. Each target is checked here, before any request."""
    from kubectl_zsniff.kube.targets import POD, parse_target

    words = list(words)
    targets: list[str] = []
    if not selector:
        if not words:
            raise click.UsageError("give a POD to capture (or -l SELECTOR)")
        targets.append(words.pop(0))
    while words and _names_a_target(words[0]):
        targets.append(words.pop(0))
    if selector and not targets and words:
        first = words[0].split("[", 1)[0].lower()
        if (_DNS_LABEL.match(first) and first not in BPF_FIRST_WORDS
                and not first.isdigit()):
            raise click.UsageError(
                f"with -l, the words after the options are a BPF filter, and {words[0]!r} "
                f"is not how a filter starts: to capture pod {words[0]}, leave out -l; to "
                f"add it to the selected pods, name it pod/{words[0]} (a filter can also be "
                "given with -f)")
    named = []
    for word in targets:
        try:
            ref = parse_target(word)
        except ZsniffError as err:
            raise TargetUsageError(err.message, err.hint) from err
        # Pods as zsniff prints them (NAME or NS/NAME); other kinds as the user wrote them.
        named.append(word if ref.kind is not POD else
                     f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name)
    return named, words


def _is_node_word(word: str) -> bool:
    from kubectl_zsniff.kube.targets import NODE, parse_target

    return parse_target(word).kind is NODE


def build_capture_options(**kw: Any) -> CaptureOptions:
    """The click parameters as one frozen CaptureOptions, every contradiction a usage error."""
    _refuse_bad_limits(kw)
    rotation = RotationOptions(kw["rotate_size"], kw["rotate_every"], kw["ring"])
    if kw["ring"] is not None and not rotation.active:
        raise click.UsageError("-W/--ring keeps the last N files of a rotation: add -C SIZE "
                               "or -G DURATION")
    pods, filter_text, node_capture = _targets_and_filter(kw)
    interface = kw["interface"] or ("any" if node_capture else "eth0")
    path = _output_path(kw, pods)
    zeek_dir = Path(kw["zeek_dir"]) if kw["zeek_dir"] else None
    zeek_json = kw["zeek_json"]
    if (kw["zeek_logs"] or kw["zeek_only"]) and not (zeek_dir or zeek_json):
        raise click.UsageError("--zeek-logs and --zeek-only choose Zeek's rows: add --zeek DIR "
                               "or --zeek-json FILE|-")
    zeek_selection = _selection(kw["zeek_logs"], kw["zeek_only"], "--zeek-logs", "--zeek-only")
    fmt = _output_format(kw, path, rotation)
    return CaptureOptions(
        kube=KubeOptions(kw["kubeconfig"], kw["context"], kw["namespace"], kw["request_timeout"]),
        target=TargetOptions(
            tuple(pods), kw["container"], kw["selector"], kw["all_namespaces"], kw["max_pods"],
            kw["skip_uncapturable"], kw["capture_namespace"], kw["via_node"],
        ),
        inject=InjectOptions(
            kw["image"], kw["privileged"], kw["start_timeout"], int(kw["idle_lifetime"])
        ),
        tcpdump=TcpdumpOptions(
            interface, kw["snaplen"], filter_text, not kw["no_promiscuous"],
            kw["buffer_kib"], kw["compress"],
        ),
        limits=CaptureLimits(kw["packet_count"], kw["duration"], kw["max_size"]),
        output=OutputOptions(
            path, fmt, kw["wireshark"], kw["wireshark_path"], zeek_dir,
            tuple(kw["zeek_script"]), kw["view"], kw["force"], zeek_json, zeek_selection,
            reorder_window=kw["reorder_window"],
            # Zeek must see each packet once; a capture file keeps both ends unless asked.
            dedup=kw["dedup"] if kw["dedup"] is not None else bool(zeek_dir or zeek_json),
            rotation=rotation,
        ),
        names=not kw["no_names"],
        reconnect_for=kw["reconnect_for"],
    )


def _refuse_bad_limits(kw: dict[str, Any]) -> None:
    # Zero is no limit for none of them (--count 0 is refused by its type): leave a limit out
    # for no limit, rather than `-d 0` capturing forever and `--max-size 0` writing nothing.
    if kw["duration"] is not None and kw["duration"] <= 0:
        raise click.BadParameter("must be more than 0 (leave it out for no limit)",
                                 param_hint="'-d' / '--duration'")
    if kw["max_size"] is not None and kw["max_size"] <= 0:
        raise click.BadParameter("must be more than 0 (leave it out for no limit)",
                                 param_hint="'--max-size'")
    for flag, value in (("'-C' / '--rotate-size'", kw["rotate_size"]),
                        ("'-G' / '--rotate-every'", kw["rotate_every"])):
        if value is not None and value <= 0:
            raise click.BadParameter("must be more than 0 (leave it out for no rotation)",
                                     param_hint=flag)
    if kw["reconnect_for"] < 0:
        raise click.BadParameter("must be 0 (no reconnect) or more",
                                 param_hint="'--reconnect-for'")


def _targets_and_filter(kw: dict[str, Any]) -> tuple[list[str], str, bool]:
    """The targets as zsniff names them, the BPF filter, and whether a node is captured."""
    pods, filter_words = split_targets(list(kw["words"]), kw["selector"])
    if kw["all_namespaces"] and not kw["selector"]:
        raise click.UsageError("-A/--all-namespaces goes with -l/--selector")
    nodes = [p for p in pods if _is_node_word(p)]
    if nodes and (len(pods) > 1 or kw["selector"]):
        raise click.UsageError(
            "node/NAME is captured alone: it already holds every pod on that node (run "
            "one zsniff per node, or name pods without the node)")
    if kw["via_node"] and nodes:
        raise click.UsageError("--via-node captures pods from their node; node/NAME already "
                               "captures the whole node: use one or the other")
    if kw["capture_namespace"] and not (nodes or kw["via_node"]):
        raise click.UsageError("--capture-namespace is where a node capture pod is made: it "
                               "goes with node/NAME or --via-node")
    filter_text = kw["bpf_filter"]
    if filter_words:
        if filter_text:
            raise click.UsageError("give the filter with -f or as trailing words, not both")
        filter_text = " ".join(filter_words)
    return pods, filter_text, bool(nodes)


def _output_path(kw: dict[str, Any], pods: list[str]) -> Path | None:
    """-w FILE; with nothing asked, standard output for a pipe, a file named after the pod for
    a terminal."""
    write = kw["write_path"] or kw["write_path_alias"]
    if write:
        return Path(write)
    if kw["wireshark"] or kw["zeek_dir"] or kw["zeek_json"] or kw["view"]:
        return None
    if sys.stdout is None or not sys.stdout.isatty():
        return Path("-")
    pod = pods[0].replace("/", "_") if pods else (kw["selector"] or "pods")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', pod)}-{stamp}.pcapng")


def _output_format(kw: dict[str, Any], path: Path | None,
                   rotation: RotationOptions) -> OutputFormat:
    """The -w file's format, once every output combination that cannot work is refused."""
    from kubectl_zsniff.capture.session import output_format_for

    to_stdout = path is not None and str(path) == "-"
    if kw["fmt"] and path is None:
        raise click.UsageError(
            "--format sets the format of the -w file; Wireshark, Zeek and --view read the "
            "stream as it is (pcapng, with the names): add -w FILE, or leave --format out")
    if kw["force"] and (path is None or to_stdout):
        raise click.UsageError("--force overwrites an existing -w FILE: it needs -w FILE")
    fmt = output_format_for(path, OutputFormat(kw["fmt"]) if kw["fmt"] else None)
    if kw["zeek_json"] == "-" and to_stdout:
        raise click.UsageError("standard output can carry the capture (-w -) or Zeek's JSON "
                               "(--zeek-json -), not both: send one to a file")
    if rotation.active and (path is None or to_stdout):
        raise click.UsageError("-C/-G write a series of files: they need -w FILE")
    if rotation.active and fmt != OutputFormat.PCAPNG:
        raise click.UsageError("-C/-G write pcapng files (each with its own header and "
                               "names): leave out --format pcap, or name the file .pcapng")
    if kw["view"] and to_stdout:
        raise click.UsageError("--view shows packets on the terminal: it cannot go with -w -")
    return fmt


def _capture(opts: CaptureOptions, reporter: ConsoleReporter) -> int:
    from kubectl_zsniff.capture.session import run_capture

    stdout = None
    if opts.output.to_stdout or opts.output.zeek_json == "-":
        from kubectl_zsniff.cli.streams import standard_output

        stdout = standard_output()
    summary = run_capture(opts, reporter, stdout)
    reporter.finish()
    reporter.summary(summary, opts)
    if summary.error is not None:
        reporter.error(summary.error)
    return int(summary.exit_status)


def _make_reporter(quiet: bool, live: bool = True) -> ConsoleReporter:
    from kubectl_zsniff.cli.console import ConsoleReporter

    return ConsoleReporter(quiet=quiet, live=live)


def _run(action: Callable[[], int], debug: bool, reporter: ConsoleReporter) -> int:
    """Run a command; every failure becomes one line, a hint and its exit status."""
    try:
        return int(action())
    except ZsniffError as err:  # explained: no traceback, even with --debug
        reporter.finish()
        reporter.error(err)
        return int(err.status)
    except KeyboardInterrupt:
        reporter.finish()
        reporter.error(
            ZsniffError(
                "interrupted before the capture started",
                "a capture container already injected exits by itself after --idle-lifetime",
                ExitStatus.INTERRUPTED,
            )
        )
        return int(ExitStatus.INTERRUPTED)
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        reporter.finish()
        if debug:
            import traceback

            traceback.print_exc()
        reporter.error(
            ZsniffError(
                f"unexpected error: {type(exc).__name__}: {exc}",
                "run again with --debug for a traceback, and please report it",
                ExitStatus.ERROR,
            )
        )
        return int(ExitStatus.ERROR)


def truncation_warning(path: str, tail: int) -> str:
    # tshark's words for the same: "appears to have been cut short in the middle of a packet".
    return (f"warning: {path} was cut short in the middle of a packet (a capture still being "
            f"written, or copied before it ended): the last {plural(tail, 'byte')} are not a "
            "whole packet and were left out")


def _selection(logs: str | None, flows: tuple[str, ...], logs_flag: str,
               flows_flag: str) -> RowSelection | None:
    """The volume knob from its flags, or None for everything; bad rules are usage errors."""
    if not logs and not flows:
        return None
    from kubectl_zsniff.zeek.select import RowSelection, SelectionError

    try:
        return RowSelection.parse(logs, flows)
    except SelectionError as exc:
        raise click.UsageError(f"{logs_flag if 'log' in str(exc) else flows_flag}: {exc}") \
            from exc


def _enrich_to_json(logs: tuple[str, ...], namemap: NameSource, target: str,
                    context: str | None, selection: RowSelection | None,
                    reporter: ConsoleReporter) -> int:
    from kubectl_zsniff.names.map import as_lookup
    from kubectl_zsniff.sinks.jsonlines import JsonLinesOutput
    from kubectl_zsniff.zeek.jsonl import logs_to_json

    stdout = None
    if target == "-":
        from kubectl_zsniff.cli.streams import standard_output

        stdout = standard_output()
    out = JsonLinesOutput(target, stdout=stdout)
    try:
        stats, unusable = logs_to_json(logs, as_lookup(namemap), out.write, context=context,
                                       selection=selection)
    finally:
        out.close()
    reporter.progress(
        f"{plural(out.lines, 'JSON line')} to {out.where}, {stats.named_rows:,} with a pod name"
        + (f"; {plural(stats.bad_lines, 'line')} that no header describes left out"
           if stats.bad_lines else "")
        + (f" ({stats.counts.text()})" if selection is not None else ""))
    if unusable:
        path, why = unusable[0]
        more = f" (and {plural(len(unusable) - 1, 'other file')})" if len(unusable) > 1 else ""
        raise ZsniffError(
            f"{path}: {why}{more}",
            "give Zeek's logs (conn.log, dns.log... in TSV or JSON) or a folder of them",
            ExitStatus.USAGE,
        )
    return 0


def _cluster_owners(kw: dict[str, Any],
                    reporter: ConsoleReporter) -> tuple[dict[str, PodName], str]:
    """Every pod, service and node address of the cluster with what is known of its owner
    (workload, node), and the kubectl context they were read with."""
    from kubectl_zsniff.kube.client import load_client
    from kubectl_zsniff.kube.namewatch import NameWatcher
    from kubectl_zsniff.names.book import NameBook

    kube = load_client(
        KubeOptions(kw["kubeconfig"], kw["context"], kw["namespace"], kw["request_timeout"])
    )
    book = NameBook()
    missing = NameWatcher(book, kube, kube.namespace).load()
    if missing:
        reporter.progress("names limited: not allowed to list " + ", ".join(missing))
    return book.current(), kube.context_name


def _cluster_names(kw: dict[str, Any], reporter: ConsoleReporter,
                   only_namespace: str | None = None) -> dict[str, str]:
    """Every pod, service and node address of the cluster, as `NS/POD`, `NS/svc/X`, `node/X`;
    with `only_namespace`, that namespace's pods and services alone."""
    owners, _ = _cluster_owners(kw, reporter)
    return {ip: owner.name for ip, owner in owners.items()
            if only_namespace is None or owner.namespace == only_namespace}


@cli.command("view")
@click.argument("capture_file", type=click.Path(dir_okay=False))
@click.option("-Y", "--display-filter", default=None, help="Wireshark display filter.")
@click.option("--count", type=click.IntRange(1), default=None, help="Show at most N packets.")
@click.option(
    "-H",
    "--hosts",
    "hosts_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Extra names from a Wireshark hosts file (see `hosts`).",
)
@click.option("--absolute-time", is_flag=True, help="Wall-clock times instead of relative.")
@click.option("--debug", is_flag=True, hidden=True)
def view_command(
    capture_file: str,
    display_filter: str | None,
    count: int | None,
    hosts_file: str | None,
    absolute_time: bool,
    debug: bool,
) -> None:
    """Show a saved pcap/pcapng in the terminal, with the names it carries."""
    reporter = _make_reporter(False)

    def action() -> int:
        from rich.console import Console

        from kubectl_zsniff.cli.streams import standard_output
        from kubectl_zsniff.view.render import view_file

        standard_output()  # the rows need somewhere to go

        # A pipe has no width: keep whole summaries rather than rich's 80 columns.
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        shown = view_file(
            capture_file,
            console,
            display_filter,
            count,
            "absolute" if absolute_time else "relative",
            hosts_file,
        )

        from kubectl_zsniff.formats.pcapng import truncated_bytes

        tail = truncated_bytes(capture_file)
        if tail:
            reporter.progress(truncation_warning(capture_file, tail))
        reporter.progress(f"{plural(shown, 'packet')} shown")
        return 0

    sys.exit(_run(action, debug, reporter))


@cli.command("convert")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("destination", type=click.Path(dir_okay=False))
@_kube_options
@click.option(
    "--names-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Take the names from a hosts file instead of the cluster.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing DESTINATION.")
@click.option("--debug", is_flag=True, hidden=True)
def convert_command(
    source: str, destination: str, names_from: str | None, force: bool, debug: bool,
    **kw: Any,
) -> None:
    """Turn any pcap/pcapng (ksniff, tcpdump...) into a pcapng carrying the cluster's names."""
    reporter = _make_reporter(False)

    def action() -> int:
        from kubectl_zsniff.offline import convert_capture
        from kubectl_zsniff.sinks.file import refuse_overwrite

        if Path(source).resolve() != Path(destination).resolve():  # that has its own error
            refuse_overwrite(Path(destination), force, "choose another DESTINATION")
        names = _read_hosts(names_from) if names_from else _cluster_names(kw, reporter)
        summary = convert_capture(
            Path(source),
            Path(destination),
            names,
            f"converted by kubectl-zsniff {__version__} from {source}",
        )
        if summary.truncated_bytes:
            reporter.progress(truncation_warning(source, summary.truncated_bytes))
        reporter.progress(
            f"wrote {destination}: {plural(summary.packets, 'packet')}, "
            f"{plural(summary.interfaces, 'interface')}, {plural(summary.names, 'cluster name')} "
            f"(+{summary.kept_names:,} from the file); "
            f"read it with: tshark -r {destination} -N n"
        )
        return 0

    sys.exit(_run(action, debug, reporter))


@cli.command("hosts")
@_kube_options
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    default="-",
    show_default=True,
    help="Where to write the hosts file.",
)
@click.option("--debug", is_flag=True, hidden=True)
def hosts_command(output: str, debug: bool, **kw: Any) -> None:
    """Write the cluster's names as a Wireshark hosts file (tshark -H FILE -N n)."""
    reporter = _make_reporter(False)

    def action() -> int:
        from kubectl_zsniff.offline import hosts_file_text, write_text_private

        if output == "-":
            from kubectl_zsniff.cli.streams import standard_output

            out = standard_output()
        # -n NS: that namespace's pods and services only (no -n: the whole cluster).
        names = _cluster_names(kw, reporter, only_namespace=kw["namespace"])
        if not names:
            where = f'namespace "{kw["namespace"]}"' if kw["namespace"] else "the cluster"
            raise ZsniffError(
                f"no pod, service or node names found in {where}",
                "check the namespace (kubectl get pods -n NS) or leave -n out for the cluster",
                ExitStatus.NOT_FOUND,
            )
        text = hosts_file_text(names)
        if output == "-":
            out.write(text.encode("utf-8"))
            out.flush()
        else:
            write_text_private(Path(output), text)
            reporter.progress(f"wrote {output}: use it with tshark -H {output} -N n")
        return 0

    sys.exit(_run(action, debug, reporter))


@cli.command("enrich")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@_kube_options
@click.option(
    "--names-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Names from a zsniff pcapng (as they were during that capture) or a hosts "
    "file, instead of the cluster.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write enriched copies here (default: rewrite in place).",
)
@click.option(
    "--json",
    "json_out",
    metavar="FILE|-",
    default=None,
    help="One stream of JSON lines instead (one row per line, `_path`, names of both ends): "
    "for a SIEM shipper.",
)
@click.option("--logs", "only_logs", metavar="conn,dns,...", default=None,
              help="Only these logs (Zeek's paths).")
@click.option("--only", "only_flows", multiple=True, metavar="RULE",
              help="Only flows matching RULE (repeatable, any may match): leaves-namespace, "
              "unknown, workload=NAME, namespace=NS.")
@click.option("--debug", is_flag=True, hidden=True)
def enrich_command(
    logs: tuple[str, ...], names_from: str | None, output_dir: str | None,
    json_out: str | None, only_logs: str | None, only_flows: tuple[str, ...], debug: bool,
    **kw: Any
) -> None:
    """Add orig_pod/resp_pod (and namespaces) to Zeek logs (TSV or JSON) made elsewhere."""
    reporter = _make_reporter(False)
    if json_out is not None and output_dir is not None:
        raise click.UsageError("--json writes one stream; -o/--output-dir writes files: pick one")
    selection = _selection(only_logs, only_flows, "--logs", "--only")

    def action() -> int:
        from kubectl_zsniff.names.map import DictNameMap

        namemap: NameSource
        context: str | None = None
        if names_from and _is_capture(names_from):
            from kubectl_zsniff.offline import names_from_capture

            namemap = names_from_capture(Path(names_from))
        elif names_from:
            namemap = DictNameMap(_read_hosts(names_from))
        else:
            names, context = _cluster_owners(kw, reporter)
            namemap = DictNameMap(names)
        if json_out is not None:
            return _enrich_to_json(logs, namemap, json_out, context, selection, reporter)
        from kubectl_zsniff.zeek.logs import enrich_paths

        results = enrich_paths(logs, namemap, output_dir, selection=selection)
        unusable = [r for r in results if r.skipped and r.skipped.startswith(UNUSABLE_LOG)]
        for result in results:
            if result in unusable:
                continue
            if result.skipped:
                reporter.progress(f"{result.path}: left as is ({result.skipped})")
            else:
                reporter.progress(
                    f"{result.output or result.path}: {plural(result.rows, 'row')}, "
                    f"{result.named_rows:,} with a pod name"
                )
        if unusable:
            first = unusable[0]
            more = f" (and {plural(len(unusable) - 1, 'other file')})" if len(unusable) > 1 else ""
            raise ZsniffError(
                f"{first.path}: {first.skipped}{more}",
                "give Zeek's logs (conn.log, dns.log... in TSV or JSON) or a folder of them",
                ExitStatus.USAGE,
            )
        return 0

    sys.exit(_run(action, debug, reporter))


@cli.command("leftovers")
@click.argument("pods", nargs=-1, required=True, metavar="POD [pod/POD|NS/POD...]")
@_kube_options
@click.option("--debug", is_flag=True, hidden=True)
def leftovers_command(pods: tuple[str, ...], debug: bool, **kw: Any) -> None:
    """List the capture containers zsniff left in pods, running or exited (ephemeral
    containers cannot be removed; a running one exits after its --idle-lifetime)."""
    from kubectl_zsniff.kube.targets import POD, parse_target

    reporter = _make_reporter(False)
    # Usage errors before anything runs: click reports them (exit 2), not _run.
    names, extra = split_targets(list(pods), None)
    if extra:
        raise click.UsageError(f"not a pod: {extra[0]!r} (name more pods as pod/NAME)")
    refs = [parse_target(word) for word in names]  # split_targets checked each
    if any(ref.kind is not POD for ref in refs):
        raise click.UsageError("leftovers lists capture containers of pods: name pods "
                               "(NAME, NS/NAME, pod/NAME)")

    def action() -> int:
        from kubectl_zsniff.cli.streams import standard_output
        from kubectl_zsniff.kube.client import load_client
        from kubectl_zsniff.kube.container import leftovers
        from kubectl_zsniff.kube.pod import get_pod

        kube = load_client(
            KubeOptions(kw["kubeconfig"], kw["context"], kw["namespace"], kw["request_timeout"])
        )
        lines = []
        for ref in refs:
            name = ref.name
            namespace = ref.namespace or kube.namespace
            found = leftovers(get_pod(kube, namespace, name))
            if not found:
                lines.append(f"{namespace}/{name}: no zsniff capture container")
            for item in found:
                lines.append(f"{namespace}/{name}\t{item.name}\t{item.state}\t{item.detail}"
                             f"\t{item.image}")
        out = standard_output()
        out.write(("\n".join(lines) + "\n").encode("utf-8"))
        out.flush()
        return 0

    sys.exit(_run(action, debug, reporter))


# Why enrich could not use a file at all (as opposed to a log with no rows to name).
UNUSABLE_LOG = ("not a Zeek log", "cannot read", "no such file")


def _is_capture(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ZsniffError(f"cannot read {path}: {exc.strerror}",
                          "check the path given to --names-from",
                          ExitStatus.USAGE) from exc
    from kubectl_zsniff.formats.detect import capture_format

    return capture_format(magic) is not None


def _read_hosts(path: str) -> dict[str, str]:
    """A Wireshark-style hosts file (formats/hosts.py), its faults said as --names-from's."""
    from kubectl_zsniff.formats.hosts import HostsFormatError, parse_hosts

    hint = "give a hosts file (kubectl zsniff hosts -o FILE writes one) or a zsniff pcapng"
    try:
        names = parse_hosts(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZsniffError(f"cannot read {path}: {exc.strerror}",
                          "check the path given to --names-from",
                          ExitStatus.USAGE) from exc
    except HostsFormatError as exc:
        raise ZsniffError(f"{path}, {exc}", hint, ExitStatus.USAGE) from exc
    if not names:
        raise ZsniffError(f"{path} holds no names", hint, ExitStatus.USAGE)
    return names


# ksniff's flags that mean something else (or nothing) here: what to use instead.
KSNIFF_FLAGS = {
    "-o": "ksniff's -o FILE is -w FILE here (-o is kubectl's output format flag)",
    "-v": "ksniff's -v is --debug here (-v is a verbosity level in kubectl)",
    "-p": "ksniff's -p (a privileged pod on the node) is not needed: zsniff injects an "
          "ephemeral container; --privileged makes that container privileged",
    "-x": "ksniff's -x CONTEXT is --context CONTEXT here (kubectl's name)",
}


def usage_hint(exc: click.ClickException) -> str:
    """The hint line of a usage error: a ksniff flag's replacement, else where help is."""
    if isinstance(exc, TargetUsageError):
        return exc.hint
    option = getattr(exc, "option_name", None)
    if isinstance(exc, click.NoSuchOption) and option in KSNIFF_FLAGS:
        return KSNIFF_FLAGS[option]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else _prog_name()
    return f"see: {path} --help"


def _click_error(exc: click.ClickException) -> int:
    """Usage errors in the project's form: one `error:` line and a `hint:` line, exit 2."""
    print(f"error: {exc.format_message()}", file=sys.stderr, flush=True)
    print(f"hint: {usage_hint(exc)}", file=sys.stderr, flush=True)
    return int(exc.exit_code)


def main() -> None:
    status: int = 0
    try:
        result = cli(prog_name=_prog_name(), standalone_mode=False)
        status = result if isinstance(result, int) else 0
    except click.ClickException as exc:
        status = _click_error(exc)
    except click.exceptions.Abort:
        status = int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # A broken stdout pipe ends the capture cleanly; Python must not print its own error.
        status = int(ExitStatus.READER_CLOSED)
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    _exit(status)


def _exit(status: int) -> None:
    """Exit now if name-watch threads still block in a request: letting the interpreter tear
    down under a thread inside OpenSSL can abort the process (SIGABRT) instead of exiting."""
    import threading

    if any(t.name.startswith("zsniff-watch") and t.is_alive() for t in threading.enumerate()):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    sys.exit(status)


def _prog_name() -> str:
    base = os.path.basename(sys.argv[0] or "kubectl-zsniff")
    return "kubectl zsniff" if base.startswith("kubectl-") or base == "__main__.py" else base
