"""A pod as the capture sees it: read from the API, described (PodInfo), checked capturable."""

from __future__ import annotations

from dataclasses import dataclass

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field, pod_ips


@dataclass(frozen=True)
class CapturePlace:
    """Where tcpdump runs when that is not the pod itself: a capture pod on the pod's node."""

    namespace: str
    pod: str
    container: str


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
    uid: str = ""
    # --via-node: captured from this pod on its node, inside this pod's network namespace.
    via: CapturePlace | None = None

    @property
    def title(self) -> str:
        return self.label or f"{self.namespace}/{self.name}"


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
        uid=str(meta.get("uid") or ""),
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
