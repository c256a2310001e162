"""A real single-node Kubernetes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kubelet and containerd, all in the node's own namespaces (node.py), reached from the host at
``https://127.0.0.1:PORT`` through the relay.

``up(state)`` builds what is missing (binaries: build.py, images: images.py), starts each
component, waits until the node is Ready and the ``default`` service account exists, and
returns the kubeconfig. ``down(state)`` removes everything ``up`` made, also after a
``kill -9`` of any part of it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import images, node
from .build import Binaries, binaries_cached, cache_root, ensure_binaries, go_missing_reason
from .node import NODE_IPV4, NODE_IPV6, NODE_NAME, NodeRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE = Path(".zsniff-real")
CONTEXT = "zsniff-real"
LIMITED_CONTEXT = "zsniff-real-limited"
LIMITED_USER = "zsniff-limited"
# kubelet's streamingConnectionIdleTimeout and containerd's stream_idle_timeout (both 4h by
# default; 5 min on CIS-hardened clusters): the tests shorten it to see quiet captures end.
DEFAULT_STREAM_IDLE_TIMEOUT = "4h"
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
APISERVER_IN_NODE = f"https://{NODE_IPV4}:{node.APISERVER_PORT}"


class ClusterError(RuntimeError):
    pass


def missing_reason() -> str | None:
    """Why the real cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "the real cluster needs root (namespaces, cgroups, containerd)"
    for tool in (CONTAINERD, CTR, RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local", "nsenter",
                 "unshare", "openssl", "ip"):
        if shutil.which(tool) is None:
            return f"the real cluster needs {tool} (bash scripts/setup installs it)"
    if images.missing_tools():
        return f"the real cluster's images need {', '.join(images.missing_tools())}"
    return None if binaries_cached() else go_missing_reason()


# ---- certificates ---------------------------------------------------------------------------

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CLIENT = ("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
           "basicConstraints=CA:FALSE\n")


def _openssl(*args: Any) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _issue(pki: Path, name: str, subject: str, extensions: str) -> None:
    (pki / f"{name}.cnf").write_text(extensions)
    _openssl("req", *_EC_KEY, "-keyout", pki / f"{name}.key", "-out", pki / f"{name}.csr",
             "-subj", subject)
    _openssl("x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt", "-CAkey",
             pki / "ca.key", "-CAcreateserial", "-out", pki / f"{name}.crt", "-days", "30",
             "-extfile", pki / f"{name}.cnf")


def make_pki(state: Path) -> Path:
    """The cluster CA and every certificate of its components and users (openssl CLI)."""
    pki = state / "pki"
    if (pki / "done").exists():
        return pki
    pki.mkdir(mode=0o700, exist_ok=True)
    _openssl("req", "-x509", *_EC_KEY, "-keyout", pki / "ca.key", "-out", pki / "ca.crt",
             "-days", "30", "-subj", "/CN=zsniff-real-ca", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext",
             "keyUsage=critical,keyCertSign,cRLSign")
    _issue(pki, "apiserver", "/CN=kube-apiserver",
           f"subjectAltName=IP:127.0.0.1,IP:{NODE_IPV4},IP:10.96.0.1,DNS:localhost,"
           "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
           "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
           "basicConstraints=CA:FALSE\n")
    _issue(pki, "kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
           f"subjectAltName=IP:{NODE_IPV4},IP:{NODE_IPV6},DNS:{NODE_NAME}\n"
           "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n"
           "basicConstraints=CA:FALSE\n")
    for name, subject in (("apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client"),
                          ("controller-manager", "/CN=system:kube-controller-manager"),
                          ("scheduler", "/CN=system:kube-scheduler"),
                          ("admin", "/O=system:masters/CN=zsniff-admin"),
                          ("limited", f"/CN={LIMITED_USER}")):
        _issue(pki, name, subject, _CLIENT)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             pki / "sa.key")
    _openssl("pkey", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")
    # Static bearer tokens too (--token-auth-file), for what needs a token rather than a
    # certificate: in-cluster config, exec credential plugins.
    _write_private(pki / "tokens.csv", "".join(
        f'{secrets.token_hex(16)},{user},{user},"{groups}"\n'
        for user, groups in (("zsniff-admin", "system:masters"), (LIMITED_USER, ""))))
    (pki / "done").write_text("")
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def component_kubeconfig(state: Path, name: str) -> Path:
    """A kubeconfig for a component inside the node, by certificate file paths."""
    pki = state / "pki"
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": name,
           "clusters": [{"name": "real", "cluster": {
               "server": APISERVER_IN_NODE, "certificate-authority": str(pki / "ca.crt")}}],
           "users": [{"name": name, "user": {
               "client-certificate": str(pki / f"{name}.crt"),
               "client-key": str(pki / f"{name}.key")}}],
           "contexts": [{"name": name, "context": {"cluster": "real", "user": name}}]}
    return _write_private(state / f"{name}.kubeconfig", json.dumps(cfg, indent=2))


def user_kubeconfig(state: Path, port: int) -> Path:
    """DIR/kubeconfig: contexts zsniff-real (cluster admin) and zsniff-real-limited."""
    pki = state / "pki"
    users = [{"name": name, "user": {"client-certificate-data": _b64(pki / f"{name}.crt"),
                                     "client-key-data": _b64(pki / f"{name}.key")}}
             for name in ("admin", "limited")]
    cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {},
           "clusters": [{"name": CONTEXT, "cluster": {
               "server": f"https://127.0.0.1:{port}",
               "certificate-authority-data": _b64(pki / "ca.crt")}}],
           "users": users,
           "contexts": [
               {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "admin",
                                             "namespace": "default"}},
               {"name": LIMITED_CONTEXT, "context": {"cluster": CONTEXT, "user": "limited",
                                                     "namespace": "default"}}],
           "current-context": CONTEXT}
    return _write_private(state / "kubeconfig", json.dumps(cfg, indent=2))


# ---- configuration files --------------------------------------------------------------------


def containerd_config(state: Path, stream_idle_timeout: str) -> Path:
    d = state / "containerd"
    (state / "cni-conf").mkdir(exist_ok=True)
    (state / "cni-ipam").mkdir(exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0", "name": "zsniff-real",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "dataDir": str(state / "cni-ipam"),
                              "ranges": [[{"subnet": node.POD_SUBNET_V4}],
                                         [{"subnet": node.POD_SUBNET_V6}]],
                              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}],
    }
    (state / "cni-conf" / "10-zsniff.conflist").write_text(json.dumps(conflist, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{images.PAUSE}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  stream_idle_timeout = "{stream_idle_timeout}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{state / 'cni-conf'}"
"""
    d.mkdir(exist_ok=True)
    path = d / "config.toml"
    path.write_text(text)
    return path


def kubelet_config(state: Path, prefix: str, stream_idle_timeout: str) -> Path:
    pki = state / "pki"
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IPV4, "port": 10250, "readOnlyPort": 0, "healthzPort": 0,
        "authentication": {"x509": {"clientCAFile": str(pki / "ca.crt")},
                           "webhook": {"enabled": True}, "anonymous": {"enabled": False}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{prefix}",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{state / 'containerd' / 'containerd.sock'}",
        # Debian's containerd 1.6 does not pin the sandbox image: never collect images.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "streamingConnectionIdleTimeout": stream_idle_timeout,
        "resolvConf": str(state / "resolv.conf"),
        # root here cannot lower an oom_score_adj (no CAP_SYS_RESOURCE).
        "oomScoreAdj": 0,
        "podLogsDir": "/var/log/pods",
        "serializeImagePulls": False,
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    }
    path = state / "kubelet-config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


# ---- processes ------------------------------------------------------------------------------


def _start(state: Path, record: NodeRecord, name: str, argv: list[str]) -> None:
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.log", "ab") as logf:
        proc = subprocess.Popen([*node.enter(record.holder_pid), *argv],
                                stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    record.pids[name] = proc.pid
    record.commands[name] = argv
    record.save(state)


def restart(state: Path, record: NodeRecord, name: str, down_for: float = 0.0) -> None:
    """SIGKILL a component (as a crash or a node reboot would) and start it again."""
    pid = record.pids[name]
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while node.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(down_for)
    _start(state, record, name, record.commands[name])


def _log_tail(state: Path, name: str, lines: int = 15) -> str:
    try:
        return "\n".join((state / "logs" / f"{name}.log").read_text(
            errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(what: str, state: Path, record: NodeRecord, component: str, check: Any,
          timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        pid = record.pids.get(component)
        if pid and not node.alive(pid):
            raise ClusterError(f"{component} exited while waiting for {what}; "
                               f"{state / 'logs' / (component + '.log')}:\n"
                               f"{_log_tail(state, component)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}; "
                               f"last lines of {component}'s log:\n"
                               f"{_log_tail(state, component)}")
        time.sleep(0.2)


class Api:
    """REST calls as the cluster admin (client certificate), through the relay."""

    def __init__(self, state: Path, port: int, user: str = "admin") -> None:
        pki = state / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / f"{user}.crt"), str(pki / f"{user}.key"))
        self.base = f"https://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=ctx))

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10,
             content_type: str = "application/json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Content-Type": content_type, "Accept": "application/json"})
        try:
            with self.opener.open(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, path: str) -> bool:
        try:
            return self.call("GET", path, timeout=2)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def ensure(self, path: str, obj: dict[str, Any]) -> None:
        """Create `obj` in the collection `path` unless it exists."""
        status, body = self.call("POST", path, obj)
        if status not in (200, 201, 409):
            raise ClusterError(f"creating {obj['kind']} {obj['metadata']['name']}: "
                               f"HTTP {status}: {body}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _bind(api: Api, name: str, cluster_role: str, user: str) -> None:
    api.ensure(f"{RBAC}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def _bootstrap_objects(api: Api) -> None:
    # The API server's client certificate must be allowed to use kubelet's API (exec, logs).
    _bind(api, "zsniff-apiserver-kubelet-admin", "system:kubelet-api-admin",
          "kube-apiserver-kubelet-client")
    # The limited user: may read pods and exec, may not patch pods/ephemeralcontainers.
    api.ensure(f"{RBAC}/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "zsniff-limited"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]})
    _bind(api, "zsniff-limited", "zsniff-limited", LIMITED_USER)
    for level in ("baseline", "restricted"):
        api.ensure("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": level, "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": "latest"}}})


def _node_ready(api: Api) -> bool:
    try:
        status, obj = api.call("GET", f"/api/v1/nodes/{NODE_NAME}", timeout=3)
    except (OSError, urllib.error.URLError):
        return False
    if status != 200:
        return False
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in obj.get("status", {}).get("conditions", []))
    # The node lifecycle controller lifts the not-ready taint a moment after Ready: until
    # then the scheduler places nothing.
    tainted = any(t.get("key") == "node.kubernetes.io/not-ready"
                  for t in obj.get("spec", {}).get("taints", []))
    return ready and not tainted


def _default_accounts(api: Api) -> bool:
    try:
        return all(api.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default",
                            timeout=3)[0] == 200 for ns in ("default", "baseline", "restricted"))
    except (OSError, urllib.error.URLError):
        return False


def is_up(state: Path) -> bool:
    record = NodeRecord.load(state)
    if not record or not node.alive(record.holder_pid):
        return False
    if not all(node.alive(p) for p in record.pids.values()):
        return False
    api = Api(state, record.relay_port)
    return api.ok("/readyz") and _node_ready(api)


def up(state: Path, timeout: float = 240, log: Any = None,
       stream_idle_timeout: str = DEFAULT_STREAM_IDLE_TIMEOUT) -> Path:
    """Start everything (after cleaning a crashed earlier run); returns DIR/kubeconfig."""
    say = log or (lambda msg: print(f"realcluster: {msg}", file=sys.stderr, flush=True))
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if is_up(state):
        return state / "kubeconfig"
    down(state)
    state.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    binaries = ensure_binaries()
    say(f"binaries ready ({binaries.version}) after {time.monotonic() - started:.0f}s")
    tars = images.build_all(cache_root() / "images")
    pki = make_pki(state)
    prefix = node.prefix_for(state)
    holder = node.start_holder(state / "holder.log")
    time.sleep(0.05)
    record = NodeRecord(prefix=prefix, holder_pid=holder.pid,
                        net_inode=0, mnt_inode=0, relay_port=_free_port(), pids={},
                        stream_idle_timeout=stream_idle_timeout)
    for _ in range(100):  # unshare has made the namespaces once they differ from ours
        net, mnt = node.ns_inode(holder.pid, "net"), node.ns_inode(holder.pid, "mnt")
        if net and mnt and net != node.ns_inode("self", "net") and \
                mnt != node.ns_inode("self", "mnt"):
            record.net_inode, record.mnt_inode = net, mnt
            break
        time.sleep(0.02)
    else:
        raise ClusterError("unshare did not create the node's namespaces")
    record.save(state)
    node.prepare_namespaces(holder.pid, state)
    node.make_cgroup_root(prefix)
    _start_control_plane(state, record, binaries, pki)
    api = Api(state, record.relay_port)
    _wait("the API server to be ready", state, record, "kube-apiserver",
          lambda: api.ok("/readyz"), timeout)
    _bootstrap_objects(api)
    _start(state, record, "kube-controller-manager", [
        binaries["kube-controller-manager"],
        f"--kubeconfig={component_kubeconfig(state, 'controller-manager')}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={node.SERVICE_SUBNET}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--bind-address=127.0.0.1", "--secure-port=10257",
        "--controllers=*,-nodeipam"])
    _start(state, record, "kube-scheduler", [
        binaries["kube-scheduler"],
        f"--kubeconfig={component_kubeconfig(state, 'scheduler')}", "--leader-elect=false",
        "--bind-address=127.0.0.1", "--secure-port=10259"])
    config = containerd_config(state, stream_idle_timeout)
    _start(state, record, "containerd", [CONTAINERD, "--config", str(config)])
    ctr = [CTR, "--address", str(state / "containerd" / "containerd.sock")]
    _wait("containerd to answer", state, record, "containerd",
          lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0, 60)
    images.import_all(ctr, tars)
    _start(state, record, "kubelet", [
        binaries["kubelet"], f"--config={kubelet_config(state, prefix, stream_idle_timeout)}",
        f"--kubeconfig={component_kubeconfig(state, 'kubelet')}",
        f"--root-dir={state / 'kubelet'}", f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IPV4},{NODE_IPV6}", "--v=1"])
    _wait("the node to be Ready", state, record, "kubelet", lambda: _node_ready(api), timeout)
    _wait("the default service accounts", state, record, "kube-controller-manager",
          lambda: _default_accounts(api), timeout)
    kubeconfig = user_kubeconfig(state, record.relay_port)
    say(f"up in {time.monotonic() - started:.0f}s: {kubeconfig}")
    return kubeconfig


def _start_control_plane(state: Path, record: NodeRecord, binaries: Binaries,
                         pki: Path) -> None:
    _start(state, record, "etcd", [
        binaries["etcd"], "--name=node", f"--data-dir={state / 'etcd'}",
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=node=http://127.0.0.1:2380", "--unsafe-no-fsync",
        "--log-level=warn"])
    _start(state, record, "kube-apiserver", [
        binaries["kube-apiserver"], "--etcd-servers=http://127.0.0.1:2379",
        f"--advertise-address={NODE_IPV4}", f"--secure-port={node.APISERVER_PORT}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={node.SERVICE_SUBNET}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true", f"--cert-dir={state / 'apiserver-certs'}",
        "--profiling=false"])
    _start_relay(state, record)


def _start_relay(state: Path, record: NodeRecord) -> None:
    with open(state / "logs" / "relay.log", "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.realcluster.relay", "--port", str(record.relay_port),
             "--netns-of", str(record.holder_pid),
             "--to", f"{NODE_IPV4}:{node.APISERVER_PORT}"],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True)
    record.pids["relay"] = proc.pid
    record.save(state)


def down(state: Path) -> list[str]:
    """Remove every process, cgroup, namespace, mount and file of this state dir; returns
    what could not be removed (empty when all is gone)."""
    state = state.resolve()
    record = NodeRecord.load(state)
    prefix = node.prefix_for(state)
    problems = [f"process {p} would not die" for p in node.kill_all(record, prefix)]
    problems += [f"cgroup {c} is still in use" for c in node.remove_cgroups(prefix)]
    # Only a directory that up made (its CA, its record) is removed, never one given by mistake.
    if state.exists() and ((state / "node.json").exists() or (state / "pki").exists()
                           or not any(state.iterdir())):
        shutil.rmtree(state, ignore_errors=True)
        if state.exists():
            problems.append(f"{state} could not be removed")
    return problems
