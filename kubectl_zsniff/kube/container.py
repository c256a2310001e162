"""The capture container: its spec (pure), injection as an ephemeral container, waiting, reuse."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field, pod_ips
from kubectl_zsniff.kube.watch import pod_versions
from kubectl_zsniff.options import InjectOptions

CONTAINER_PREFIX = "zsniff-"
CAPTURE_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
PSA_LABEL = "pod-security.kubernetes.io/enforce"

# The container's main process: it lives while a capture touches its heartbeat file and exits
# IDLE seconds after the last touch, so a vanished laptop never leaves it running for long.
LIFETIME_SCRIPT = (
    'hb="/tmp/.$1"; touch "$hb"; '
    'while [ $(( $(date +%s) - $(date -r "$hb" +%s) )) -lt "$2" ]; do sleep 2; done'
)

# Runs tcpdump with the user's arguments as "$@" (never interpolated by a shell). It reports
# tcpdump's PID, keeps the heartbeat fresh while tcpdump lives, and stops tcpdump when stdin
# closes: that is how a client (or the node, when the client vanishes) ends the capture. Each
# line the client sends on stdin becomes a SIGUSR1, on which tcpdump prints its counters
# (captured, received, dropped by the kernel) and goes on: live drop counts, and stderr bytes
# that keep a quiet capture's stream busy from the pod's side. The client sends lines only
# once tcpdump said "listening" (its handler is set by then; before, USR1 would kill it).
CAPTURE_SCRIPT = (
    'hb="/tmp/.$1"; shift; '
    'echo "zsniff-pid $$" >&2; '
    "exec 3<&0; "
    "( while read -r _ <&3; do kill -USR1 $$; done; kill -TERM $$ 2>/dev/null ) "
    ">/dev/null 2>&1 & "
    '( while kill -0 $$ 2>/dev/null; do touch "$hb"; sleep 2; done ) </dev/null >/dev/null 2>&1 & '
    'exec tcpdump "$@" 3<&-'
)


@dataclass(frozen=True)
class CaptureContainer:
    name: str


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    containers: tuple[str, ...]
    phase: str
    pod_ips: tuple[str, ...]
    # Why a container cannot start (ImagePullBackOff, CrashLoopBackOff...), with its message.
    waiting: tuple[str, str] | None = None
    # What the capture is named after, when not this pod: `node/NAME` for a node capture pod.
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or f"{self.namespace}/{self.name}"


def capture_command(container_name: str, tcpdump_args: list[str]) -> list[str]:
    return ["sh", "-c", CAPTURE_SCRIPT, "zsniff", container_name, *tcpdump_args]


def container_spec(
    name: str,
    image: str,
    target_container: str,
    capabilities: tuple[str, ...],
    privileged: bool,
    idle_lifetime: int,
) -> dict[str, Any]:
    """The ephemeral container, as `kubectl debug` would send it."""
    security: dict[str, Any] = {}
    if capabilities:
        security["capabilities"] = {"add": list(capabilities)}
    if privileged:
        security["privileged"] = True
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": ["sh", "-c", LIFETIME_SCRIPT, "zsniff", name, str(idle_lifetime)],
        "targetContainerName": target_container,
        "resources": {},
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "stdin": False,
        "tty": False,
    }
    if security:
        spec["securityContext"] = security
    return spec


def plan_capabilities(psa_level: str | None, privileged: bool) -> tuple[str, ...]:
    """Which capabilities to add: only where the namespace's PodSecurity level allows them."""
    if privileged:
        return ()
    if psa_level in ("baseline", "restricted"):
        # baseline forbids NET_RAW/NET_ADMIN; containerd's default set still has NET_RAW.
        return ()
    return CAPTURE_CAPABILITIES


def restricted_error(namespace: str) -> ZsniffError:
    return ZsniffError(
        f'namespace "{namespace}" enforces PodSecurity "restricted": '
        "no container there may capture packets",
        "capture from a namespace at the baseline or privileged level, or ask an admin to "
        f"relabel it: kubectl label ns {namespace} {PSA_LABEL}=baseline --overwrite",
        ExitStatus.POD_SECURITY,
    )


def get_pod(kube: KubeClient, namespace: str, name: str) -> JSON:
    try:
        return kube.get(
            f'get pod "{name}" in namespace "{namespace}"',
            api_path("pods", name, namespace=namespace),
        )
    except ZsniffError as err:
        if err.status == ExitStatus.NOT_FOUND:
            raise _pod_not_found(kube, namespace, name) from err
        raise


def _pod_not_found(kube: KubeClient, namespace: str, name: str) -> ZsniffError:
    """Say what is missing: the namespace itself, or the pod there (and where it is)."""
    try:
        kube.get("get namespace", api_path("namespaces", namespace))
    except ZsniffError as err:
        if err.status == ExitStatus.NOT_FOUND:
            return ZsniffError(
                f'namespace "{namespace}" not found (looking for pod "{name}")',
                "list the namespaces with: kubectl get namespaces",
                ExitStatus.NOT_FOUND,
            )
    elsewhere: list[str] = []
    try:
        found = kube.get("list pods", api_path("pods"), fieldSelector=f"metadata.name={name}")
        elsewhere = sorted(str(field(p, "metadata", "namespace"))
                           for p in found.get("items") or ())
    except ZsniffError:
        pass  # not allowed to look in every namespace: the plain hint
    hint = f"list the pods with: kubectl get pods -n {namespace}"
    if elsewhere:
        where = ", ".join(elsewhere[:5])
        hint = (f'a pod "{name}" exists in namespace {where}: add -n {elsewhere[0]} '
                f"(or name it {elsewhere[0]}/{name})")
    return ZsniffError(f'pod "{name}" not found in namespace "{namespace}"', hint,
                       ExitStatus.NOT_FOUND)


def describe_pod(pod: JSON) -> PodInfo:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return PodInfo(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        node=str(spec.get("nodeName") or ""),
        containers=tuple(str(c.get("name")) for c in spec.get("containers") or ()),
        phase=str(field(pod, "status", "phase") or "Unknown"),
        pod_ips=tuple(pod_ips(pod)),
        waiting=_waiting(pod),
    )


# Reasons a container waits that waiting longer does not cure.
STUCK_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                 "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError")


def _waiting(pod: JSON) -> tuple[str, str] | None:
    for status in field(pod, "status", "containerStatuses") or ():
        reason = str(field(status, "state", "waiting", "reason") or "")
        if reason in STUCK_REASONS:
            return reason, str(field(status, "state", "waiting", "message") or "")
    return None


def check_capturable(info: PodInfo, container: str | None) -> str:
    """Return the container whose namespaces the capture shares, or explain why not."""
    if info.phase in ("Succeeded", "Failed"):
        raise ZsniffError(
            f'pod "{info.name}" has finished ({info.phase}): there is no traffic to capture',
            "capture a running pod (kubectl get pods)",
            ExitStatus.POD_NOT_RUNNING,
        )
    if info.phase != "Running" and info.waiting is not None:
        reason, message = info.waiting
        cannot = "its image cannot be pulled" if "Image" in reason else "it cannot start"
        raise ZsniffError(
            f'pod "{info.name}" is not running ({info.phase}): {cannot} ({reason}'
            + (f": {message[:160]}" if message else "") + ")",
            f"waiting will not help: see why with kubectl describe pod {info.name} "
            f"-n {info.namespace} (Events), and fix the pod",
            ExitStatus.POD_NOT_RUNNING,
        )
    if info.phase != "Running":
        raise ZsniffError(
            f'pod "{info.name}" is not running yet (phase {info.phase})',
            f"wait for it: kubectl wait --for=condition=Ready pod/{info.name} -n {info.namespace}",
            ExitStatus.POD_NOT_RUNNING,
        )
    if container is None:
        return info.containers[0]
    if container not in info.containers:
        raise ZsniffError(
            f'container "{container}" not found in pod "{info.name}"',
            "its containers are: " + ", ".join(info.containers),
            ExitStatus.NOT_FOUND,
        )
    return container


def namespace_psa_level(kube: KubeClient, namespace: str) -> str | None:
    """The enforced PodSecurity level, or None when unlabelled or not readable by this user."""
    try:
        ns = kube.get("get namespace", api_path("namespaces", namespace))
    except ZsniffError as err:
        if err.status in (ExitStatus.FORBIDDEN, ExitStatus.NOT_FOUND):
            return None
        raise
    level = (field(ns, "metadata", "labels") or {}).get(PSA_LABEL)
    return str(level) if level else None


def find_reusable(pod: JSON, image: str) -> str | None:
    """A running zsniff container of the same image already in the pod."""
    specs = {c.get("name"): c for c in field(pod, "spec", "ephemeralContainers") or ()}
    for status in field(pod, "status", "ephemeralContainerStatuses") or ():
        name = str(status.get("name") or "")
        spec = specs.get(name)
        if (
            spec is not None
            and name.startswith(CONTAINER_PREFIX)
            and spec.get("image") == image
            and field(status, "state", "running") is not None
        ):
            return name
    return None


@dataclass(frozen=True)
class Leftover:
    """A capture container zsniff put in a pod (ephemeral containers cannot be removed)."""

    name: str
    image: str
    state: str  # running / exited / waiting
    detail: str  # since when, exit code, or why it waits
    tcpdump_args: str = ""


def leftovers(pod: JSON) -> list[Leftover]:
    """The zsniff capture containers of a pod, running or exited, in the pod's order."""
    statuses = {s.get("name"): s for s in field(pod, "status", "ephemeralContainerStatuses")
                or ()}
    found = []
    for spec in field(pod, "spec", "ephemeralContainers") or ():
        name = str(spec.get("name") or "")
        if not name.startswith(CONTAINER_PREFIX):
            continue
        state = (statuses.get(name) or {}).get("state") or {}
        if "running" in state:
            kind, detail = "running", f"since {state['running'].get('startedAt') or '?'}"
        elif "terminated" in state:
            done = state["terminated"]
            kind = "exited"
            detail = (f"exit {done.get('exitCode')}"
                      + (f" ({done['reason']})" if done.get("reason") else "")
                      + f" at {done.get('finishedAt') or '?'}")
        else:
            waiting = state.get("waiting") or {}
            kind, detail = "waiting", str(waiting.get("reason") or "not started")
        found.append(Leftover(name, str(spec.get("image") or ""), kind, detail))
    return found


Progress = Callable[[str], None]


def preflight_refusal(
    pod: JSON, level: str | None, opts: InjectOptions
) -> ZsniffError | None:
    """Why PodSecurity would refuse a capture container in this pod (None: it would not).

    Run for every target before any pod is changed: a refusal found halfway through used to
    leave capture containers in the pods prepared before it.
    """
    if find_reusable(pod, opts.image) and not opts.privileged:
        return None
    namespace = str(field(pod, "metadata", "namespace"))
    if level == "restricted":
        return restricted_error(namespace)
    if opts.privileged and level == "baseline":
        return ZsniffError(
            f'namespace "{namespace}" enforces PodSecurity "baseline": '
            "a privileged capture container is forbidden there",
            "capture without --privileged (containerd keeps NET_RAW under baseline), or in a "
            "namespace at the privileged level",
            ExitStatus.POD_SECURITY,
        )
    return None


def ensure_capture_container(
    kube: KubeClient,
    pod: JSON,
    target_container: str,
    opts: InjectOptions,
    progress: Progress,
    psa_level: str | None = None,
) -> CaptureContainer:
    namespace = str(field(pod, "metadata", "namespace"))
    pod_name = str(field(pod, "metadata", "name"))
    reusable = find_reusable(pod, opts.image)
    if reusable and not opts.privileged:
        progress(f"reusing capture container {reusable}")
        return CaptureContainer(reusable)

    level = psa_level if psa_level is not None else namespace_psa_level(kube, namespace)
    if level == "restricted":
        raise restricted_error(namespace)
    caps = plan_capabilities(level, opts.privileged)
    name = CONTAINER_PREFIX + secrets.token_hex(3)
    try:
        _patch_ephemeral(kube, namespace, pod_name, name, target_container, caps, opts)
    except ZsniffError as err:
        if err.status != ExitStatus.POD_SECURITY or not caps or opts.privileged:
            raise
        # The level was not readable; the namespace refused our capabilities: try without.
        progress("PodSecurity refused NET_ADMIN/NET_RAW; trying without added capabilities")
        caps = ()
        try:
            _patch_ephemeral(kube, namespace, pod_name, name, target_container, caps, opts)
        except ZsniffError as err2:
            if err2.status == ExitStatus.POD_SECURITY:
                raise restricted_error(namespace) from err2
            raise
    progress(f"injected ephemeral container {name} ({opts.image})")
    wait_until_running(kube, namespace, pod_name, name, opts.start_timeout, progress)
    return CaptureContainer(name)


def _patch_ephemeral(
    kube: KubeClient,
    namespace: str,
    pod_name: str,
    name: str,
    target_container: str,
    caps: tuple[str, ...],
    opts: InjectOptions,
) -> None:
    body = {
        "spec": {
            "ephemeralContainers": [
                container_spec(
                    name, opts.image, target_container, caps, opts.privileged, opts.idle_lifetime
                )
            ]
        }
    }
    try:
        kube.patch(
            "patch pods/ephemeralcontainers",
            api_path("pods", pod_name, "ephemeralcontainers", namespace=namespace),
            body,
        )
    except ZsniffError as err:
        if err.status == ExitStatus.NOT_FOUND:
            raise ZsniffError(
                "this cluster does not support ephemeral containers "
                f"(pods/ephemeralcontainers not found): {err.message}",
                "ephemeral containers are GA since Kubernetes 1.25; on older clusters enable "
                "the EphemeralContainers feature gate",
                ExitStatus.UNSUPPORTED,
            ) from err
        if err.status == ExitStatus.FORBIDDEN:
            raise ZsniffError(
                err.message,
                "zsniff needs `patch` on pods/ephemeralcontainers and `create` on pods/exec: "
                f"kubectl auth can-i patch pods/ephemeralcontainers -n {namespace}",
                ExitStatus.FORBIDDEN,
            ) from err
        raise


FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
IMAGE_REASONS = FATAL_WAITING | {"ErrImagePull"}


def container_state(pod: JSON, name: str) -> tuple[str, str, str]:
    """('running'|'waiting'|'terminated'|'unknown', reason, message) of an ephemeral container."""
    for status in field(pod, "status", "ephemeralContainerStatuses") or ():
        state = status.get("state")
        if status.get("name") != name or not state:
            continue
        if state.get("running") is not None:
            return "running", "", ""
        if state.get("terminated") is not None:
            t = state["terminated"]
            reason = t.get("reason") or f"exit code {t.get('exitCode')}"
            return "terminated", str(reason), str(t.get("message") or "")
        if state.get("waiting") is not None:
            w = state["waiting"]
            return "waiting", str(w.get("reason") or ""), str(w.get("message") or "")
    return "unknown", "", ""


def wait_until_running(
    kube: KubeClient,
    namespace: str,
    pod_name: str,
    name: str,
    timeout: float,
    progress: Progress,
) -> None:
    deadline = time.monotonic() + timeout
    last_reason = ""
    for pod in pod_versions(kube, namespace, pod_name, deadline=deadline):
        if pod is None:
            raise ZsniffError(
                f'pod "{pod_name}" disappeared while the capture container was starting',
                "",
                ExitStatus.NOT_FOUND,
            )
        state, reason, message = container_state(pod, name)
        if reason and reason != last_reason:
            progress(f"capture container {state}: {reason} {message}".strip())
            last_reason = reason
        if state == "running":
            return
        _raise_if_failed(name, state, reason, message)
    hint = "raise --start-timeout"
    if last_reason in IMAGE_REASONS:
        hint = "the image is still being pulled or cannot be pulled; check --image"
    raise ZsniffError(
        f"the capture container did not start within {timeout:g}s"
        + (f" (last state: {last_reason})" if last_reason else ""),
        hint,
        ExitStatus.START_TIMEOUT,
    )


def _raise_if_failed(name: str, state: str, reason: str, message: str) -> None:
    if state == "terminated":
        raise ZsniffError(
            f"the capture container {name} stopped before the capture: "
            f"{reason} {message}".strip(),
            "check that the image has sh and tcpdump (--image)",
            ExitStatus.CAPTURE_FAILED,
        )
    if state == "waiting" and reason in FATAL_WAITING:
        raise ZsniffError(
            f"cannot pull the capture image: {reason} {message}".strip(),
            "check --image and that the node can reach its registry "
            "(private registries need imagePullSecrets on the pod)",
            ExitStatus.IMAGE_PULL,
        )
