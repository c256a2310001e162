"""The capture container: its spec (pure), PodSecurity's say, injection as an ephemeral
container, waiting, reuse, and what earlier captures left in a pod."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field
from kubectl_zsniff.kube.scripts import LIFETIME_SCRIPT
from kubectl_zsniff.kube.watch import pod_versions
from kubectl_zsniff.options import InjectOptions

CONTAINER_PREFIX = "zsniff-"
CAPTURE_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
PSA_LABEL = "pod-security.kubernetes.io/enforce"

@dataclass(frozen=True)
class CaptureContainer:
    name: str


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
        "capture it from its node, leaving the pod unchanged: add --via-node "
        "--capture-namespace NS (a namespace at the privileged level); or ask an admin to "
        f"relabel it: kubectl label ns {namespace} {PSA_LABEL}=baseline --overwrite",
        ExitStatus.POD_SECURITY,
    )


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
