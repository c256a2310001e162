"""More of what a user sees, end to end on the local test cluster: exec credential plugins,
the terminal view, hosts files and Zeek log enrichment from the cluster, the live status line."""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.connect_proxy import ConnectProxy
from tests.e2e.conftest import IMAGE, ZSNIFF, classify, load, zsniff_env
from tests.shared_data import ZEEK_DATA

needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="ping not installed")


def env_for(home: Path, kubeconfig: Path) -> dict[str, str]:
    """This checkout's CLI (conftest's ZSNIFF and PYTHONPATH) with the kubeconfig in KUBECONFIG."""
    env = zsniff_env(home)
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def ping(cluster: Any, pod: str, target: str) -> None:
    cluster.run_in_pod("default", pod, ["ping", "-c", "4", "-i", "0.2", target],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=30)


def wait_for_listening(stream: Any) -> None:
    """Read the CLI's stderr until tcpdump listens (or the CLI ends)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line or "listening on" in line:
            return


def capture_briefly(home: Path, kubeconfig: Path, out: Path,
                    *flags: str) -> subprocess.CompletedProcess[str]:
    """Two seconds of out-web's traffic into `out`, as the kubeconfig's user."""
    return subprocess.run(
        [*ZSNIFF, "out-web", *flags, "-d", "2s", "-w", str(out), "--image", IMAGE],
        env=env_for(home, kubeconfig), capture_output=True, text=True, timeout=90,
    )


@pytest.fixture(scope="module")
def pods(cluster: Any) -> Any:
    cluster.create_pod("out-web", command=["sleep", "3600"])
    cluster.create_pod("out-client", command=["sleep", "3600"])
    yield cluster.pod_ip("default", "out-web"), cluster.pod_ip("default", "out-client")
    cluster.delete_pod("out-web")
    cluster.delete_pod("out-client")


def test_client_certificate_auth_for_rest_and_the_exec_stream(
    cluster: Any, pods: Any, kube_home: Path, tmp_path: Path
) -> None:
    """kubeadm, kind and minikube kubeconfigs carry a client certificate and no token."""
    config = json.loads(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == cluster.cert_context)
    user = next(u for u in config["users"] if u["name"] == context["context"]["user"])["user"]
    assert "token" not in user and "client-certificate-data" in user
    out = tmp_path / "c.pcapng"
    result = capture_briefly(kube_home, cluster.kubeconfig, out, "--context",
                             cluster.cert_context)
    assert result.returncode == 0, result.stderr
    assert "listening on eth0" in result.stderr
    # the section comment
    assert f"context {cluster.cert_context}" in out.read_bytes().decode("latin-1")


def test_capture_through_the_kubeconfig_proxy(
    cluster: Any, pods: Any, kube_home: Path, tmp_path: Path
) -> None:
    """proxy-url: the REST calls (the official client) and the exec stream (ours) both
    tunnel through the proxy, and the capture is the same as without it."""
    config = json.loads(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    with ConnectProxy() as proxy:
        config["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        kubeconfig = tmp_path / "proxied.kubeconfig"
        kubeconfig.write_text(json.dumps(config))
        result = capture_briefly(kube_home, kubeconfig, tmp_path / "p.pcapng")
        tunnels = list(proxy.requests)
    assert result.returncode == 0, result.stderr
    assert "tcpdump stopped in the pod (verified)" in result.stderr
    target = server.split("://", 1)[1]
    assert tunnels and all(t.startswith(f"CONNECT {target} HTTP/1.") for t in tunnels), tunnels
    # The exec streams' tunnels are zsniff's own (HTTP/1.1); urllib3 (REST) sends HTTP/1.0.
    assert sum(t.endswith("HTTP/1.1") for t in tunnels) >= 2  # capture + tcpdump check


@needs_ping
def test_exec_credential_plugin_token_reaches_the_exec_stream(
    cluster: Any, pods: Any, kube_home: Path, tmp_path: Path
) -> None:
    """EKS/GKE/AKS style auth: the token comes from a plugin, for REST and for the websocket.
    The plugin runs, the capture holds the pings with the pod names, the token is nowhere."""
    config = json.loads(cluster.kubeconfig.read_text())
    admin = next(u for u in config["users"] if u["name"] == "admin")
    token = cluster.admin_token()
    calls = tmp_path / "plugin-calls"
    plugin = tmp_path / "token-plugin"
    plugin.write_text(
        f"#!{sys.executable}\nimport json, os\n"
        f"open({str(calls)!r}, 'a').write(os.environ.get('KUBERNETES_EXEC_INFO', '-') + '\\n')\n"
        "print(json.dumps({"
        '"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", '
        f'"status": {{"token": "{token}"}}}}))\n'
    )
    plugin.chmod(0o755)
    # The plugin is the user's only credential.
    admin["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                              "command": str(plugin), "interactiveMode": "Never"}}
    kubeconfig = tmp_path / "plugin.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    out = tmp_path / "p.pcapng"
    web_ip, client_ip = pods
    proc = subprocess.Popen(
        [*ZSNIFF, "out-web", "-d", "6s", "-w", str(out), "--image", cluster.capture_image,
         "icmp"],
        env=env_for(kube_home, kubeconfig), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    wait_for_listening(proc.stderr)
    ping(cluster, "out-client", web_ip)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    assert "tcpdump stopped in the pod (verified)" in stderr, stderr
    assert calls.exists() and calls.read_text().strip(), "the credential plugin never ran"
    capture = load(out)
    echoes = [c for c in map(classify, (p.data for p in capture.packets))
              if c and c[0] == "icmp" and {c[1], c[2]} == {web_ip, client_ip}]
    assert len(echoes) == 8, f"{len(echoes)} of the 8 echo packets in the file"
    assert capture.names.get(client_ip) == "default/out-client", capture.names
    assert token not in stderr + stdout
    assert token.encode() not in out.read_bytes()


@needs_ping
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_terminal_view_shows_pod_names(cluster: Any, pods: Any, kube_home: Path) -> None:
    web_ip, _ = pods
    proc = subprocess.Popen(
        [*ZSNIFF, "out-web", "--view", "-d", "8s", "--image", IMAGE, "icmp"],
        env=env_for(kube_home, cluster.kubeconfig), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    wait_for_listening(proc.stderr)
    ping(cluster, "out-client", web_ip)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    rows = [line for line in stdout.splitlines() if "→" in line]
    assert len(rows) == 8, stdout  # 4 requests, 4 replies
    assert all("default/out-client" in r and "default/out-web" in r for r in rows)
    assert all("ICMP" in r for r in rows)


def test_hosts_file_from_the_cluster(cluster: Any, pods: Any, kube_home: Path) -> None:
    web_ip, client_ip = pods
    result = subprocess.run([*ZSNIFF, "hosts"], env=env_for(kube_home, cluster.kubeconfig),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {tuple(line.split("\t")) for line in result.stdout.splitlines()
             if not line.startswith("#")}
    assert (web_ip, "default/out-web") in lines
    assert (client_ip, "default/out-client") in lines
    node = cluster.node_names[0]
    node_ip = next(a["address"] for a in cluster.request("GET", f"/api/v1/nodes/{node}")[
        "status"]["addresses"] if a["type"] == "InternalIP")
    assert (node_ip, f"node/{node}") in lines


def test_enrich_zeek_log_with_names_from_the_cluster(
    cluster: Any, pods: Any, kube_home: Path, tmp_path: Path
) -> None:
    from parsezeeklogs import ZeekLog

    web_ip, client_ip = pods
    baseline = ZEEK_DATA / "decanon" / "core.tcp.reassembly-known-ports_conn.log"
    if not baseline.exists():
        pytest.skip(f"shared Zeek data not found at {ZEEK_DATA}")
    lines = baseline.read_text().splitlines(keepends=True)
    fields = next(x for x in lines if x.startswith("#fields")).rstrip("\n").split("\t")[1:]
    row = next(x for x in lines if not x.startswith("#")).rstrip("\n").split("\t")
    row[fields.index("id.orig_h")], row[fields.index("id.resp_h")] = client_ip, web_ip
    log = tmp_path / "conn.log"
    log.write_text("".join(x for x in lines if x.startswith("#") and not x.startswith("#close"))
                   + "\t".join(row) + "\n" + next(x for x in lines if x.startswith("#close")))
    result = subprocess.run([*ZSNIFF, "enrich", str(log)],
                            env=env_for(kube_home, cluster.kubeconfig),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (record,) = list(ZeekLog(str(log)))
    assert record["orig_pod"] == "default/out-client"
    assert record["resp_pod"] == "default/out-web"
    assert record["id.orig_h"] == client_ip  # the original fields are untouched


@needs_ping
def test_live_status_line_on_a_terminal(cluster: Any, pods: Any, kube_home: Path,
                                        tmp_path: Path) -> None:
    web_ip, _ = pods
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*ZSNIFF, "out-web", "-d", "6s", "-w", str(tmp_path / "t.pcapng"), "--image", IMAGE,
         "icmp"],
        env=env_for(kube_home, cluster.kubeconfig), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=follower,
    )
    os.close(follower)
    screen = b""
    pinged = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            if not pinged and b"listening on" in screen:
                ping(cluster, "out-client", web_ip)
                pinged = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    text = screen.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "capturing" in text and "packets" in text and "/s" in text
    assert "8 packets" in text  # the summary after the status line


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_terminal_view_rows_never_glue_onto_the_status_line(
    cluster: Any, pods: Any, kube_home: Path, tmp_path: Path
) -> None:
    """Issue 9, defect 1: with --view the live status line (stderr) was not cleared before a
    row (stdout, the view child) was printed: rows glued onto it on the screen."""
    web_ip, _ = pods
    env = env_for(kube_home, cluster.kubeconfig)
    script = tmp_path / "run.sh"
    done = tmp_path / "status"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                      if k.isidentifier())
    command = shlex.join([*ZSNIFF, "out-web", "--view", "-d", "10s", "--image", IMAGE,
                          "icmp"])
    script.write_text(f"{exports}{command}\necho $? > {shlex.quote(str(done))}\nsleep 60\n")
    tmux = ["tmux", "-L", f"zsniff-test-{os.getpid()}"]

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "view"], capture_output=True,
                              text=True, timeout=10).stdout

    subprocess.run([*tmux, "new-session", "-d", "-s", "view", "-x", "160", "-y", "50",
                    f"sh {shlex.quote(str(script))}"], check=True, timeout=10)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in screen():
            assert time.monotonic() < deadline, screen()
            time.sleep(0.2)
        ping(cluster, "out-client", web_ip)
        ping(cluster, "out-client", web_ip)
        seen: list[str] = []
        while not done.exists():
            assert time.monotonic() < deadline + 30, screen()
            seen.append(screen())  # every refresh, not only the last screen
            time.sleep(0.3)
        seen.append(screen())
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=10, check=False)
    assert done.read_text().strip() == "0", seen[-1]
    rows = [line for line in seen[-1].splitlines() if "→" in line]
    assert len(rows) == 16, seen[-1]  # 2 x (4 requests, 4 replies)
    for shown in seen:
        for line in shown.splitlines():
            if "→" in line or "ICMP" in line:
                assert "capturing" not in line and "Ctrl-C" not in line, shown
                assert "default/out-client" in line or "default/out-web" in line, shown
