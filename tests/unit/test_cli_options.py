"""From the command line to CaptureOptions, without a cluster: what each flag becomes, and
the combinations refused with a usage error (exit 2) before anything is contacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kubectl_zsniff.cli import app
from kubectl_zsniff.options import CaptureOptions, OutputFormat


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[CaptureOptions]:
    """The options each run builds; the capture itself is replaced by recording them."""
    seen: list[CaptureOptions] = []

    def record(opts: CaptureOptions, reporter: Any) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(app, "_capture", record)
    return seen


def run(argv: list[str]) -> Any:
    # CliRunner's stdout is not a terminal: like `kubectl zsniff web | tshark -r -`.
    return CliRunner().invoke(app.cli, argv, catch_exceptions=False)


def attr(opts: CaptureOptions, dotted: str) -> Any:
    value: Any = opts
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


CASES = [
    (["web"], {"target.pods": ("web",), "output.path": Path("-"),
               "output.fmt": OutputFormat.PCAPNG, "tcpdump.bpf_filter": "", "names": True}),
    (["shop/web", "pod/api"], {"target.pods": ("shop/web", "api")}),
    (["web", "-w", "out.pcap"], {"output.path": Path("out.pcap"),
                                 "output.fmt": OutputFormat.PCAP}),
    (["web", "-w", "out.cap", "--format", "pcapng"], {"output.fmt": OutputFormat.PCAPNG}),
    (["web", "tcp", "port", "80"], {"tcpdump.bpf_filter": "tcp port 80"}),
    (["web", "-f", "udp port 53"], {"tcpdump.bpf_filter": "udp port 53"}),
    (["-l", "app=web", "-A", "icmp"], {"target.selector": "app=web", "target.pods": (),
                                       "target.all_namespaces": True,
                                       "tcpdump.bpf_filter": "icmp"}),
    (["web", "--count", "5", "-d", "1m", "--max-size", "2M"],
     {"limits.packet_count": 5, "limits.duration": 60.0}),
    (["web", "-i", "any", "-s", "96", "-B", "4096", "--no-promiscuous"],
     {"tcpdump.interface": "any", "tcpdump.snaplen": 96, "tcpdump.buffer_kib": 4096,
      "tcpdump.promiscuous": False}),
    # A node's traffic crosses many interfaces (each pod's veth, the bridge, the uplink):
    # `any` is the default there; eth0 stays the pod default, and -i still wins.
    (["node/worker-1"], {"target.pods": ("node/worker-1",), "tcpdump.interface": "any",
                         "target.capture_namespace": None}),
    (["node/worker-1", "-i", "eth0", "--capture-namespace", "zsniff"],
     {"tcpdump.interface": "eth0", "target.capture_namespace": "zsniff"}),
    (["web"], {"tcpdump.interface": "eth0", "target.via_node": False}),
    # --via-node captures inside each pod's own network: eth0 stays the default there.
    (["web", "-n", "locked", "--via-node", "--capture-namespace", "zsniff"],
     {"target.via_node": True, "target.capture_namespace": "zsniff",
      "tcpdump.interface": "eth0"}),
    (["-l", "app=web", "--via-node"], {"target.via_node": True,
                                       "target.capture_namespace": None}),
    (["web", "-c", "app", "--image", "zsniff.test/capture:1", "--privileged"],
     {"target.container": "app", "inject.image": "zsniff.test/capture:1",
      "inject.privileged": True}),
    (["web", "--wireshark"], {"output.wireshark": True, "output.path": None}),
    (["web", "--zeek", "logs", "--no-names"], {"output.zeek_dir": Path("logs"), "names": False,
                                                "output.dedup": True}),
    (["web", "pod/api", "--zeek", "logs", "--no-dedup"], {"output.dedup": False}),
    (["web", "pod/api", "--zeek-json", "-"], {"output.dedup": True}),
    (["web", "pod/api", "-w", "x.pcapng"], {"output.dedup": False}),
    (["web", "pod/api", "-w", "x.pcapng", "--dedup"], {"output.dedup": True}),
    (["web", "--context", "prod", "-n", "shop", "--kubeconfig", "/k"],
     {"kube.context": "prod", "kube.namespace": "shop", "kube.kubeconfig": "/k"}),
    (["web", "-w", "r.pcapng", "-C", "100", "-W", "3"],  # tcpdump's -C: millions of bytes
     {"output.rotation.size": 100_000_000, "output.rotation.ring": 3,
      "output.rotation.every": None}),
    (["web", "-w", "r.pcapng", "--rotate-size", "1MiB", "-G", "15m"],
     {"output.rotation.size": 1024 * 1024, "output.rotation.every": 900.0}),
    (["web"], {"output.rotation.active": False, "reconnect_for": 300.0}),
    (["web", "--reconnect-for", "0"], {"reconnect_for": 0.0}),
    (["web", "--reconnect-for", "1h"], {"reconnect_for": 3600.0}),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_flags_become_options(built: list[CaptureOptions], argv: list[str],
                              expected: dict[str, Any]) -> None:
    result = run(argv)
    assert result.exit_code == 0, result.output
    (opts,) = built
    for dotted, value in expected.items():
        assert attr(opts, dotted) == value, dotted


def test_sizes_are_read_as_people_write_them(built: list[CaptureOptions]) -> None:
    assert run(["web", "--max-size", "2M"]).exit_code == 0
    assert run(["web", "--max-size", "2MiB"]).exit_code == 0
    decimal, binary = (o.limits.max_bytes for o in built)
    assert decimal is not None and binary is not None
    assert (decimal, binary) == (2_000_000, 2 * 1024 * 1024)


REFUSED = [
    (["web", "-d", "0"], "must be more than 0"),
    (["web", "--max-size", "0"], "must be more than 0"),
    (["web", "-A"], "-A/--all-namespaces goes with -l/--selector"),
    (["web", "-f", "udp", "tcp"], "not both"),
    (["web", "--wireshark", "--format", "pcap"], "--format sets the format of the -w file"),
    (["web", "--force"], "--force overwrites an existing -w FILE"),
    (["web", "--view", "-w", "-"], "cannot go with -w -"),
    ([], "give a POD to capture"),
    (["web", "-d", "soon"], "--duration"),
    (["web", "--count", "zero"], "--count"),
    (["web", "-w", "r.pcapng", "-W", "3"], "add -C SIZE or -G DURATION"),
    (["web", "-w", "-", "-C", "1M"], "they need -w FILE"),
    (["web", "--wireshark", "-G", "1m"], "they need -w FILE"),
    (["web", "-w", "r.pcap", "-C", "1M"], "-C/-G write pcapng files"),
    (["web", "-w", "r.pcapng", "-C", "0"], "must be more than 0"),
    (["web", "-w", "r.pcapng", "-W", "0", "-C", "1M"], "--ring"),
    (["web", "--reconnect-for", "-5s"], "--reconnect-for"),
    (["node/worker-1", "pod/web"], "node/NAME is captured alone"),
    (["node/worker-1", "-l", "app=web"], "node/NAME is captured alone"),
    (["web", "--capture-namespace", "zsniff"], "it goes with node/NAME or --via-node"),
    (["node/worker-1", "--via-node"], "use one or the other"),
]


@pytest.mark.parametrize("argv, words", REFUSED, ids=[" ".join(a) or "(none)" for a, _ in REFUSED])
def test_contradictions_are_usage_errors(built: list[CaptureOptions], argv: list[str],
                                         words: str) -> None:
    result = run(argv)
    assert result.exit_code == 2, result.output
    assert words in result.output, result.output
    assert "Traceback" not in result.output
    assert built == []  # refused before any capture began
