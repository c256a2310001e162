"""Every failure a user can meet: one `error:` line naming it, a `hint:`, its exit status, no
traceback, no file left behind, no tcpdump left in the pod. Plus what must work despite the
cluster: baseline namespaces on containerd, and throttled (429) or unavailable (503) servers.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubectl_zsniff.sinks.wireshark import WELL_KNOWN_PATHS
from tests.e2e.conftest import (
    ZSNIFF,
    PodPair,
    Zsniff,
    assert_clean_error,
    assert_no_capture_left,
    load,
    stop_process,
    unique,
    zsniff_env,
)

RESTRICTED_OK = {  # what PodSecurity "restricted" demands of the pod itself
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass
class Ctx:
    """What a case's setup gets, and what it leaves for the run and the checks."""

    cluster: Any
    tmp: Path
    home: Path
    pods: list[tuple[str, str]] = field(default_factory=list)  # to delete afterwards
    env: dict[str, str] | None = None
    wrap: list[str] | None = None  # command prefix for the CLI
    cleanups: list[Callable[[], Any]] = field(default_factory=list)  # other objects made

    def pod(self, namespace: str = "default", **kw: Any) -> str:
        name = unique("e2e-fail")
        self.cluster.create_pod(name, namespace, **kw)
        self.pods.append((namespace, name))
        return name

    def kubeconfig(self, change: Callable[[dict[str, Any]], None]) -> str:
        cfg = json.loads(Path(self.cluster.kubeconfig).read_text())
        cfg = copy.deepcopy(cfg)
        change(cfg)
        path = self.tmp / f"kubeconfig-{len(list(self.tmp.glob('kubeconfig-*')))}"
        path.write_text(json.dumps(cfg))
        return str(path)


def _proxy(url: str) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        cfg["clusters"][0]["cluster"]["proxy-url"] = url

    return change


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(url: str) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        cfg["clusters"][0]["cluster"]["server"] = url
    return change


def _token(cfg: dict[str, Any]) -> None:
    cfg["users"][0]["user"] = {"token": "not-the-token"}  # its only credential


def _no_ca(cfg: dict[str, Any]) -> None:
    cfg["clusters"][0]["cluster"].pop("certificate-authority-data", None)


def _pending(c: Ctx) -> list[str]:
    pod = c.pod(image="registry.example/does-not-exist:1", wait=False)
    c.cluster.wait_for(pod, "default", lambda p: p["status"].get("phase") == "Pending")
    return [pod]


def _finished(c: Ctx) -> list[str]:
    pod = c.pod(command=["true"], restart_policy="Never", wait=False)
    c.cluster.wait_for(pod, "default", lambda p: p["status"].get("phase") == "Succeeded")
    return [pod]


def _no_ephemeral(c: Ctx) -> list[str]:
    pod = c.pod()
    c.cluster.set_ephemeral_supported(False)
    return [pod]


def _restricted(c: Ctx) -> list[str]:
    return [c.pod("restricted", security_context=RESTRICTED_OK), "-n", "restricted"]


def _slow_pull(c: Ctx) -> list[str]:
    pod = c.pod()
    c.cluster.set_pull_delay(30)
    return [pod, "--start-timeout", "2s"]


def _crio(c: Ctx) -> list[str]:
    c.cluster.set_runtime("cri-o")
    return [c.pod("baseline"), "-n", "baseline"]


def _empty_path(c: Ctx) -> None:
    empty = c.tmp / "empty-bin"
    empty.mkdir(exist_ok=True)
    c.env = zsniff_env(c.home, PATH=str(empty))
    c.env.pop("ZEEK_HOME", None)


def _no_wireshark(c: Ctx) -> list[str]:
    """PATH without Wireshark; where it is installed in a well-known folder, a private mount
    namespace hides it there too (/dev/null bound over it is not a file)."""
    _empty_path(c)
    installed = [p for p in WELL_KNOWN_PATHS["linux"] if Path(p).exists()]
    if installed:
        unshare, mount = shutil.which("unshare"), shutil.which("mount")
        if unshare is None or mount is None:
            pytest.skip("Wireshark is installed, and unshare/mount are missing to hide it")
        hide = "".join(f"{mount} --bind /dev/null {shlex.quote(p)} && " for p in installed)
        c.wrap = [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c",
                  hide + 'exec "$@"', "sh"]
    return [c.pod(), "--wireshark"]


def _no_zeek(c: Ctx) -> list[str]:
    _empty_path(c)
    return [c.pod(), "--zeek", str(c.tmp / "zeek-logs")]


def _server_keeps_failing(c: Ctx) -> list[str]:
    pod = c.pod()
    # 500, not 503: urllib3 itself retries 429/503 with Retry-After 3 times under each of
    # zsniff's 5 attempts (20 s); a 500 shows zsniff's own backoff giving up (~3 s).
    c.cluster.set_faults(api_fail_code=500, api_fail_count=50)
    return [pod]


def _not_yaml(cfg_dir: Path) -> str:
    path = cfg_dir / "broken-kubeconfig"
    path.write_text("apiVersion: v1\nclusters:\n- cluster: [unclosed\n  server: x\n")
    return str(path)


def _text_file(c: Ctx) -> str:
    path = c.tmp / "notacapture.txt"
    path.write_text("hello, this is not a capture\n" * 20)
    return str(path)


def _empty_capture(c: Ctx) -> str:
    from kubectl_zsniff.formats.pcap import encode_pcap_header

    path = c.tmp / "empty.pcap"
    path.write_bytes(encode_pcap_header(linktype=1, snaplen=65535))
    return str(path)


def _existing_output(c: Ctx) -> list[str]:
    existing = c.tmp / "existing.pcapng"
    existing.write_bytes(b"an earlier capture")
    return [c.pod(), "-w", str(existing)]


def _image_pull_backoff(c: Ctx) -> list[str]:
    pod = c.pod(image="registry.example/does-not-exist:1", wait=False)
    c.cluster.wait_for(pod, "default", lambda p: any(
        (s.get("state") or {}).get("waiting", {}).get("reason") == "ImagePullBackOff"
        for s in p["status"].get("containerStatuses") or ()), timeout=120)
    return [pod]


def _elsewhere(c: Ctx) -> list[str]:
    return [c.pod("baseline")]  # looked for in "default"


def _other_ca(cfg: dict[str, Any]) -> None:
    """A CA that did not sign the API server's certificate."""
    import base64

    pem = next(p for p in sorted(Path("/etc/ssl/certs").glob("*.pem")) if p.is_file())
    cfg["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        pem.read_bytes()).decode()


def _kubeconfig_arg(c: Ctx) -> list[str]:
    return ["--kubeconfig", str(c.cluster.kubeconfig)]


def _hosts_file(c: Ctx) -> str:
    path = c.tmp / "k8s.hosts"
    path.write_text("10.244.1.9\tshop/web\n")
    return str(path)


def _service_without_selector(c: Ctx) -> list[str]:
    name = unique("e2e-nosel")
    c.cluster.request("POST", "/api/v1/namespaces/default/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]}})
    c.cleanups.append(lambda: c.cluster.request(
        "DELETE", f"/api/v1/namespaces/default/services/{name}"))
    return [f"svc/{name}"]


def _mixed_selector(c: Ctx) -> list[str]:
    app = unique("mixed")
    c.pod(labels={"app": app})
    c.pod("restricted", labels={"app": app}, security_context=RESTRICTED_OK)
    return ["-A", "-l", f"app={app}"]


def _two_labelled(c: Ctx) -> list[str]:
    app = unique("two")
    c.pod(labels={"app": app})
    c.pod(labels={"app": app})
    return ["-l", f"app={app}", "--max-pods", "1"]


def _full_device(c: Ctx) -> list[str]:
    import os
    import stat

    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    node = c.tmp / "full-node"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return [c.pod(), "-w", str(node)]


def _closed_stdout(c: Ctx) -> list[str]:
    c.wrap = ["/bin/sh", "-c", 'exec "$@" >&-', "sh"]
    return [c.pod(), "-w", "-"]


def _no_display(c: Ctx) -> list[str]:
    if shutil.which("wireshark") is None:
        pytest.skip("wireshark not installed")
    c.env = zsniff_env(c.home, XDG_RUNTIME_DIR=str(c.tmp))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        c.env.pop(name, None)
    return [c.pod(), "--wireshark", "-d", "60s"]


USAGE = "see: kubectl zsniff"


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]
    status: int
    keywords: tuple[str, ...]  # words the one `error:` line must contain
    output: bool = True  # add -w FILE (and check that no file is left)
    raw: bool = False  # run exactly these arguments (offline commands: no --kubeconfig added)
    hint_words: tuple[str, ...] = ()  # words the `hint:` line must contain
    hint_absent: tuple[str, ...] = ()  # words the `hint:` line must not contain


CASES = [
    Case("pod-missing", lambda c: ["no-such-pod"], 3, ("not found", "no-such-pod")),
    Case("pod-pending", _pending, 4, ("not running", "Pending")),
    Case("pod-finished", _finished, 4, ("finished", "Succeeded")),
    Case("container-unknown", lambda c: [c.pod(), "-c", "nope"], 3, ("container", "nope")),
    Case("no-ephemeral-containers", _no_ephemeral, 7, ("ephemeral containers",)),
    Case("rbac-denied", lambda c: [c.pod(), "--context", c.cluster.limited_context], 5,
         ("forbidden", "pods/ephemeralcontainers")),
    Case("podsecurity-restricted", _restricted, 6, ("restricted",)),
    Case("podsecurity-privileged-in-baseline",
         lambda c: [c.pod("baseline"), "-n", "baseline", "--privileged"], 6,
         ("PodSecurity", "privileged")),
    Case("image-pull", lambda c: [c.pod(), "--image", "registry.example/does-not-exist:1"], 8,
         ("pull", "registry.example/does-not-exist:1")),
    Case("start-timeout", _slow_pull, 9, ("did not start within 2s",)),
    Case("bad-filter", lambda c: [c.pod(), "tcp", "port"], 10, ("filter", "tcp port")),
    Case("api-unreachable",
         lambda c: [c.pod(), "--kubeconfig",
                    c.kubeconfig(_server(f"https://127.0.0.1:{_closed_port()}"))], 12,
         ("cannot reach the API server",)),
    Case("api-keeps-failing", _server_keeps_failing, 12, ("kept failing", "500")),
    Case("unauthorized", lambda c: [c.pod(), "--kubeconfig", c.kubeconfig(_token)], 13,
         ("credentials", "401")),
    Case("tls-unverified", lambda c: [c.pod(), "--kubeconfig", c.kubeconfig(_no_ca)], 12,
         ("TLS", "certificate")),
    Case("no-net-raw-on-cri-o", _crio, 11, ("not allowed to capture",)),
    Case("wireshark-missing", _no_wireshark, 15, ("Wireshark",), output=False),
    Case("zeek-missing", _no_zeek, 15, ("Zeek",), output=False),
    Case("proxy-unsupported",
         lambda c: [c.pod(), "--kubeconfig", c.kubeconfig(_proxy("socks5://127.0.0.1:1080"))],
         2, ("proxy-url", "socks5")),
    Case("proxy-unreachable",
         lambda c: [c.pod(), "--kubeconfig",
                    c.kubeconfig(_proxy(f"http://127.0.0.1:{_closed_port()}"))], 12,
         ("proxy",)),
    Case("kubeconfig-missing", lambda c: ["web", "--kubeconfig", str(c.tmp / "nope")], 2,
         ("kubeconfig",)),
    Case("context-unknown", lambda c: ["web", "--context", "nope"], 2, ("context", "nope")),
    # --- issue 9's defects, as rows ---
    Case("filter-illegal-port", lambda c: [c.pod(), "port", "99999"], 10,
         ("filter", "illegal port"), hint_words=("BPF",)),
    Case("kubeconfig-not-yaml", lambda c: ["web", "--kubeconfig", _not_yaml(c.tmp)], 2,
         ("not valid YAML", "broken-kubeconfig", "line 4")),
    Case("restricted-via-selector", _mixed_selector, 6,
         ("restricted", "no pod was changed"), hint_words=("--skip-uncapturable",)),
    Case("stdout-closed", _closed_stdout, 16, ("standard output is closed",), output=False),
    Case("output-device-full", _full_device, 16, ("No space left on device",), output=False),
    Case("wireshark-no-display", _no_display, 15, ("Wireshark failed", "display"),
         output=False),
    Case("view-not-a-capture", lambda c: ["view", _text_file(c)], 2,
         ("not a pcap or pcapng capture",), output=False, raw=True),
    # --- usage (README: 2), in the same one-line form, ksniff's flags answered ---
    Case("unknown-flag", lambda c: ["web", "--bogus"], 2, ("No such option", "--bogus"),
         hint_words=(USAGE,)),
    Case("ksniff-o", lambda c: ["web", "-o", "x.pcap"], 2, ("-o",), hint_words=("-w FILE",)),
    Case("ksniff-v", lambda c: ["web", "-v"], 2, ("-v",), hint_words=("--debug",)),
    Case("ksniff-p", lambda c: ["web", "-p"], 2, ("-p",), hint_words=("--privileged",)),
    Case("count-zero", lambda c: ["web", "--count", "0"], 2, ("--count",)),
    Case("duration-zero", lambda c: ["web", "-d", "0"], 2, ("--duration", "more than 0")),
    Case("max-size-zero", lambda c: ["web", "--max-size", "0"], 2, ("--max-size", "more than 0")),
    Case("bad-duration", lambda c: ["web", "-d", "banana"], 2, ("not a duration",)),
    Case("bad-size", lambda c: ["web", "--max-size", "lots"], 2, ("not a size",)),
    Case("bad-start-timeout", lambda c: ["web", "--start-timeout", "soon"], 2,
         ("not a duration",)),
    Case("snaplen-too-big", lambda c: ["web", "-s", "999999"], 2, ("--snaplen",)),
    Case("buffer-too-small", lambda c: ["web", "-B", "10"], 2, ("--buffer-size",)),
    Case("bad-format", lambda c: ["web", "--format", "json"], 2, ("--format", "json")),
    Case("filter-twice", lambda c: ["web", "-f", "tcp", "udp"], 2, ("not both",)),
    Case("not-capturable-kind", lambda c: ["cronjob/web"], 2, ("cannot capture", "cronjob/web"),
         hint_words=("job/NAME",)),
    Case("no-pod", lambda c: [], 2, ("give a POD",)),
    Case("all-namespaces-without-selector", lambda c: ["web", "-A"], 2, ("-A", "selector")),
    Case("view-with-stdout", lambda c: ["web", "--view", "-w", "-"], 2, ("--view",),
         output=False),
    # --- refusals before capturing ---
    Case("namespace-missing", lambda c: ["web", "-n", "no-such-namespace"], 3,
         ('namespace "no-such-namespace" not found',), hint_words=("kubectl get namespaces",)),
    Case("selector-matches-nothing", lambda c: ["-l", "app=no-such-app"], 3,
         ("no running pod matches", "app=no-such-app")),
    Case("too-many-pods", _two_labelled, 2, ("at most 1",), hint_words=("--max-pods",)),
    Case("interface-missing", lambda c: [c.pod(), "-i", "nope0"], 11,
         ("cannot open interface", "nope0"), hint_words=("kubectl exec -n default e2e-fail-",),
         hint_absent=(" POD ",)),
    Case("output-folder-missing", lambda c: [c.pod(), "-w", str(c.tmp / "no" / "x.pcapng")], 16,
         ("cannot write",), output=False),
    Case("wireshark-path-wrong", lambda c: [c.pod(), "--wireshark", "--wireshark-path",
                                            str(c.tmp / "no-wireshark")], 15,
         ("Wireshark not found",), output=False),
    # --- offline commands ---
    Case("view-missing-file", lambda c: ["view", str(c.tmp / "nope.pcapng")], 2,
         ("no such file",), output=False, raw=True),
    Case("view-bad-display-filter", lambda c: ["view", "-Y", "tcp.port ==", _empty_capture(c)],
         2, ("bad display filter",), output=False, raw=True),
    Case("convert-not-a-capture",
         lambda c: ["convert", _text_file(c), str(c.tmp / "out.pcapng"), "--names-from",
                    _hosts_file(c)], 2, ("not a pcap or pcapng capture",), raw=True),
    Case("names-from-not-hosts",
         lambda c: ["convert", _empty_capture(c), str(c.tmp / "out.pcapng"), "--names-from",
                    _text_file(c)], 2, ("line 1", "not a hosts entry"), raw=True),
    Case("convert-missing-names-file",
         lambda c: ["convert", _text_file(c), str(c.tmp / "out.pcapng"), "--names-from",
                    str(c.tmp / "no-hosts")], 2, ("cannot read", "no-hosts"), raw=True),
    Case("view-missing-argument", lambda c: ["view"], 2, ("CAPTURE_FILE",), output=False,
         raw=True, hint_words=("view --help",)),
    # --- issue 9's rough edges, part 2 ---
    Case("output-exists", _existing_output, 16, ("existing.pcapng", "already exists"),
         output=False, hint_words=("--force",)),
    Case("force-without-file", lambda c: ["web", "--force", "-w", "-"], 2,
         ("--force", "-w FILE"), output=False),
    Case("format-without-file", lambda c: ["web", "--zeek", str(c.tmp / "z"), "--format",
                                           "pcap"], 2, ("--format", "-w"), output=False),
    # --- issue 13: Zeek for the SOC ---
    Case("zeek-json-and-capture-both-on-stdout",
         lambda c: ["web", "--zeek-json", "-", "-w", "-"], 2, ("--zeek-json -", "-w -"),
         output=False),
    Case("zeek-knob-without-zeek", lambda c: ["web", "--zeek-only", "unknown"], 2,
         ("--zeek-only", "--zeek DIR"), output=False),
    Case("zeek-knob-bad-rule",
         lambda c: ["web", "--zeek", str(c.tmp / "z"), "--zeek-only", "outside"], 2,
         ("--zeek-only", "not a flow rule", "outside"), output=False),
    Case("selector-with-pod-word", lambda c: ["web", "-l", "app=web"], 2,
         ("with -l", "'web'", "leave out -l")),
    Case("pod-in-another-namespace", _elsewhere, 3, ("not found", 'namespace "default"'),
         hint_words=("exists in namespace baseline", "-n baseline")),
    Case("namespace-slash-pod-missing", lambda c: ["no-such-namespace/web"], 3,
         ('namespace "no-such-namespace" not found',), hint_words=("kubectl get namespaces",)),
    Case("service-missing", lambda c: ["svc/no-such-service"], 3,
         ('service "no-such-service" not found', 'namespace "default"'),
         hint_words=("kubectl get services -n default",)),
    Case("service-without-selector", _service_without_selector, 3,
         ("selects no pods", "no selector"), hint_words=("endpointslices",)),
    Case("pod-image-pull-backoff", _image_pull_backoff, 4,
         ("not running", "image cannot be pulled", "ImagePullBackOff"),
         hint_words=("kubectl describe pod",), hint_absent=("kubectl wait",)),
    Case("tls-other-ca", lambda c: [c.pod(), "--kubeconfig", c.kubeconfig(_other_ca)], 12,
         ("TLS verification", "certificate")),
    Case("debug-on-an-explained-error", lambda c: ["no-such-pod", "--debug"], 3,
         ("not found",)),
    Case("enrich-not-a-zeek-log",
         lambda c: ["enrich", _text_file(c), "--names-from", _hosts_file(c)], 2,
         ("notacapture.txt", "not a Zeek log"), output=False, raw=True),
    Case("hosts-output-folder-missing",
         lambda c: ["hosts", "-o", str(c.tmp / "no" / "k8s.hosts"), *_kubeconfig_arg(c)], 16,
         ("cannot write",), output=False, raw=True, hint_words=("with -o",),
         hint_absent=("-w",)),
    Case("hosts-namespace-without-names",
         lambda c: ["hosts", "-n", "no-such-namespace", *_kubeconfig_arg(c)], 3,
         ("no pod, service or node names", "no-such-namespace"), output=False, raw=True),
    Case("leftovers-pod-missing", lambda c: ["leftovers", "no-such-pod", *_kubeconfig_arg(c)],
         3, ("not found", "no-such-pod"), output=False, raw=True),
]


@pytest.fixture
def ctx(cluster: Any, tmp_path: Path, zsniff: Zsniff) -> Any:
    c = Ctx(cluster, tmp_path, zsniff.home)
    yield c
    cluster.reset()
    for namespace, pod in c.pods:
        cluster.delete_pod(pod, namespace)
    for cleanup in c.cleanups:
        cleanup()


# The double's switches (no ephemeral containers, slow pulls, CRI-O's capabilities, a failing
# API server) have no counterpart on the real cluster: those cases run on the double alone.
DOUBLE_ONLY = {"no-ephemeral-containers", "start-timeout", "api-keeps-failing",
               "no-net-raw-on-cri-o"}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.double_only] if c.id in DOUBLE_ONLY else [])
    for c in CASES])
def test_failure_is_explained(case: Case, ctx: Ctx, zsniff: Zsniff) -> None:
    """One row per bad input: its exit status, one `error:` line with the words, a `hint:`,
    no traceback, no file left behind, no tcpdump left in any pod of the row."""
    args = case.setup(ctx)
    out = ctx.tmp / "out.pcapng"
    if case.output and not case.raw:
        args += ["-w", str(out)]
    before = {p.name for p in ctx.tmp.iterdir()}
    if case.raw:
        result = subprocess.run([*(ctx.wrap or []), *ZSNIFF, *args], capture_output=True,
                                text=True, timeout=120, env=ctx.env or zsniff_env(ctx.home))
    else:
        result = zsniff.run(args, env=ctx.env, wrap=ctx.wrap, timeout=120)
    assert_clean_error(result, case.status, *case.keywords)
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    for word in case.hint_words:
        assert word in hint, f"{word!r} not in {hint!r}"
    for word in case.hint_absent:
        assert word not in hint, f"{word!r} in {hint!r}"
    assert not out.exists(), "a failed capture left a file behind"
    left = {p.name for p in ctx.tmp.iterdir()} - before
    assert not left, f"files left behind: {left}"
    for namespace, pod in ctx.pods:
        assert_no_capture_left(ctx.cluster, namespace, pod)
    if case.id == "no-net-raw-on-cri-o":
        assert "NET_RAW" in result.stderr  # the hint names the missing capability
    if case.id == "restricted-via-selector":
        for namespace, pod in ctx.pods:
            spec = ctx.cluster.get_pod(pod, namespace)["spec"]
            assert not spec.get("ephemeralContainers"), f"{namespace}/{pod} was changed"


def test_the_table_covers_enough_bad_inputs() -> None:
    assert len(CASES) >= 40
    statuses = {c.status for c in CASES}
    assert {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16} <= statuses


def test_baseline_namespace_captures_on_containerd(
        ctx: Ctx, pair: PodPair, zsniff: Zsniff) -> None:
    """containerd's default capabilities keep NET_RAW: no capability added, capture works."""
    pod = ctx.pod("baseline")
    out = ctx.tmp / "baseline.pcapng"
    traffic = pair.traffic(icmp=1, seconds=60, pause=0.1,
                           to=[ctx.cluster.pod_ip("baseline", pod, 4)])
    try:
        result = zsniff.run([pod, "-n", "baseline", "-w", str(out), "--count", "4", "icmp"])
    finally:
        stop_process(traffic)
    assert result.returncode == 0, result.stderr
    assert len(load(out).packets) == 4
    spec = ctx.cluster.get_pod(pod, "baseline")["spec"]["ephemeralContainers"][0]
    assert "capabilities" not in spec.get("securityContext", {}), spec
    assert_no_capture_left(ctx.cluster, "baseline", pod)


@pytest.mark.double_only
@pytest.mark.parametrize("code,match", [(429, ""), (503, "ephemeralcontainers")],
                         ids=["429-any-request", "503-on-the-patch"])
def test_throttled_or_unavailable_api_is_retried(
        code: int, match: str, ctx: Ctx, zsniff: Zsniff) -> None:
    pod = ctx.pod()
    ctx.cluster.set_faults(api_fail_code=code, api_fail_count=2, api_fail_retry_after=1,
                           api_fail_match=match)
    out = ctx.tmp / "retried.pcapng"
    result = zsniff.run([pod, "-w", str(out), "-d", "1s"])
    assert result.returncode == 0, result.stderr
    assert "error:" not in result.stderr
    assert ctx.cluster.state()["faults"]["api_fail_count"] == 0, "the faults were not hit"
    assert load(out).interfaces, "the capture file has its header"
    assert_no_capture_left(ctx.cluster, "default", pod)


def test_errors_go_to_stderr_only(ctx: Ctx, zsniff: Zsniff) -> None:
    """With -w -, stdout carries capture bytes only: a failure writes nothing there."""
    result = zsniff.run(["no-such-pod", "-w", "-"])
    assert result.returncode == 3
    assert result.stdout == ""
