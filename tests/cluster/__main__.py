"""``python -m tests.cluster up|down|status [--state DIR]``.

``up`` starts the API server as a daemon (log: DIR/server.log), waits until it answers, and
prints the path of DIR/kubeconfig.  ``down`` stops it and removes every netns, veth, bridge and
process of this state dir's prefix, also after a crash.  ``down --all-prefixes`` removes every
``zst*`` leftover of any state dir.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE = Path(".zsniff-cluster")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return False


def _read_server(state: Path) -> dict[str, object] | None:
    try:
        return json.loads((state / "server.json").read_text())
    except (OSError, ValueError):
        return None


def _admin_token(state: Path) -> str:
    cfg = json.loads((state / "kubeconfig").read_text())
    return next(u["user"]["token"] for u in cfg["users"] if u["name"] == "admin")


def _answers(state: Path, port: int) -> bool:
    cfg = json.loads((state / "kubeconfig").read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    req = urllib.request.Request(f"{server}/version",
                                 headers={"Authorization": f"Bearer {_admin_token(state)}"})
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt")) \
        if server.startswith("https") else None
    try:
        # The opener without proxies: the API server is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(req, timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pki(state: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI, no extra deps)."""
    pki = state / "pki"
    pki.mkdir(exist_ok=True)
    if (pki / "admin.crt").exists():
        return pki
    subprocess.run(["openssl", "req", "-x509", *_NEW_EC_KEY, "-keyout", pki / "ca.key", "-out",
                    pki / "ca.crt", "-days", "30", "-subj", "/CN=zsniff-test-ca",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    _issue(pki, "server", "/CN=127.0.0.1",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
           "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n")
    # A client certificate as kubeadm, kind and minikube hand out: the user is the CN, the
    # groups the O (the server's x509 authenticator reads them as Kubernetes does).
    _issue(pki, "admin", "/O=system:masters/CN=admin",
           "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
           "basicConstraints=CA:FALSE\n")
    return pki


_NEW_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _issue(pki: Path, name: str, subject: str, extensions: str) -> None:
    """NAME.key and NAME.crt, signed by the CA in `pki`."""
    (pki / f"{name}.cnf").write_text(extensions)
    subprocess.run(["openssl", "req", *_NEW_EC_KEY, "-keyout", pki / f"{name}.key", "-out",
                    pki / f"{name}.csr", "-subj", subject], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt",
                    "-CAkey", pki / "ca.key", "-CAcreateserial", "-out", pki / f"{name}.crt",
                    "-days", "30", "-extfile", pki / f"{name}.cnf"], check=True,
                   capture_output=True)


def write_kubeconfig(state: Path, port: int, scheme: str) -> Path:
    cluster: dict[str, str] = {"server": f"{scheme}://127.0.0.1:{port}"}
    users: list[dict[str, Any]] = [
        {"name": "admin", "user": {"token": secrets.token_hex(16)}},
        {"name": "limited", "user": {"token": secrets.token_hex(16)}},
    ]
    contexts: list[dict[str, Any]] = [
        {"name": "zsniff-test", "context": {"cluster": "zsniff-test", "user": "admin",
                                            "namespace": "default"}},
        {"name": "zsniff-limited", "context": {"cluster": "zsniff-test", "user": "limited",
                                               "namespace": "default"}},
    ]
    if scheme == "https":
        pki = make_pki(state)

        def data(name: str) -> str:
            return base64.b64encode((pki / name).read_bytes()).decode()

        cluster["certificate-authority-data"] = data("ca.crt")
        users.append({"name": "admin-cert", "user": {
            "client-certificate-data": data("admin.crt"), "client-key-data": data("admin.key")}})
        contexts.append({"name": "zsniff-cert", "context": {
            "cluster": "zsniff-test", "user": "admin-cert", "namespace": "default"}})
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "zsniff-test", "cluster": cluster}],
        "users": users,
        "contexts": contexts,
        "current-context": "zsniff-test",
    }
    path = state / "kubeconfig"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def up(state: Path, timeout: float = 30.0, scheme: str = "https") -> Path:
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    info = _read_server(state)
    if info and _alive(int(info["pid"])) and _answers(state, int(info["port"])):  # type: ignore[arg-type]
        return state / "kubeconfig"
    if info:
        down(state)  # a crashed earlier run: clean its leftovers first
    port = _free_port()
    kubeconfig = write_kubeconfig(state, port, scheme)
    with open(state / "server.log", "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.server", "--state", str(state),
             "--port", str(port), "--scheme", scheme],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    (state / "server.json").write_text(json.dumps({
        "pid": proc.pid, "port": port, "scheme": scheme, "prefix": runtime.prefix_for(state)}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cluster server exited with {proc.returncode}; see "
                             f"{state / 'server.log'}")
        if _answers(state, port):
            return kubeconfig
        time.sleep(0.1)
    raise SystemExit(f"cluster server did not answer within {timeout}s; see "
                     f"{state / 'server.log'}")


def down(state: Path, all_prefixes: bool = False) -> None:
    state = state.resolve()
    info = _read_server(state)
    if info:
        pid = int(info["pid"])  # type: ignore[arg-type]
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        (state / "server.json").unlink(missing_ok=True)
    runtime.cleanup_prefix(runtime.prefix_for(state))
    if all_prefixes:
        runtime.cleanup_prefix("zst")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.cluster")
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--http", action="store_true",
                    help="up: plain http instead of https (kubectl then sends no token: every "
                         "kubectl request gets 401; only for clients that send tokens over http)")
    ap.add_argument("--all-prefixes", action="store_true",
                    help="down: also remove leftovers of every other state dir (zst*)")
    a = ap.parse_args(argv)
    if a.command == "up":
        print(up(a.state, scheme="http" if a.http else "https"))
    elif a.command == "down":
        down(a.state, a.all_prefixes)
    else:
        info = _read_server(a.state.resolve())
        running = bool(info and _alive(int(info["pid"])))  # type: ignore[arg-type]
        print(json.dumps({"running": running, **(info or {})}))
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
