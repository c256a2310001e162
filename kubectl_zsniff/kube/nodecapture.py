"""Capture pods on a node, made for one capture and removed (and seen gone) afterwards.

An ephemeral container can only share a pod's network; a node's own traffic (and every pod's
on that node) is seen only from the node's network namespace, so node capture needs a pod of
its own there: hostNetwork, pinned with `nodeName`, NET_RAW and NET_ADMIN. `--via-node` needs
one too, for pods whose own containers may not capture (PodSecurity `restricted`, a runtime
without NET_RAW): hostPID, so that it sees the target pod's processes, and SYS_ADMIN (setns)
and SYS_PTRACE (another user's /proc/PID/ns) to enter that pod's network namespace, leaving
the pod itself unchanged. Both ask more than pod capture (create/delete pods; PodSecurity
`privileged` in their namespace), so they are only made when the user asks for them.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field
from kubectl_zsniff.kube.container import (
    CAPTURE_CAPABILITIES,
    CONTAINER_PREFIX,
    FATAL_WAITING,
    PSA_LABEL,
)
from kubectl_zsniff.kube.scripts import LIFETIME_SCRIPT
from kubectl_zsniff.kube.watch import Listed, list_and_watch, pod_versions
from kubectl_zsniff.options import InjectOptions

Progress = Callable[[str], None]

CONTAINER = "capture"
NODE_LABEL = "zsniff.io/node-capture"  # on every capture pod, so leftovers can be listed
VIA_NODE_CAPABILITIES = ("SYS_ADMIN", "SYS_PTRACE", *CAPTURE_CAPABILITIES)


class NodeAccess(enum.Enum):
    """What of the node a capture pod shares: its network (node/NAME) or its processes, to
    enter a pod's network namespace (--via-node)."""

    NETWORK = "hostNetwork"
    PODS = "hostPID"

    @property
    def capabilities(self) -> tuple[str, ...]:
        return CAPTURE_CAPABILITIES if self is NodeAccess.NETWORK else VIA_NODE_CAPABILITIES

    @property
    def wanted(self) -> str:
        """The pod's asks, as a refusal names them."""
        caps = self.capabilities
        return f"{self.value} with {', '.join(caps[:-1])} and {caps[-1]}"


def tolerations_for(taints: list[Any]) -> list[dict[str, Any]]:
    """One toleration per taint of the node, whatever its value. `nodeName` skips the
    scheduler (so NoSchedule alone would not matter), but the kubelet refuses a pod that does
    not tolerate a NoExecute taint, and the taint manager would evict it: tolerating the
    node's own taints, not every taint, keeps the pod to what it needs."""
    seen: list[dict[str, Any]] = []
    for taint in taints:
        if not isinstance(taint, dict) or not taint.get("key"):
            continue
        toleration = {"key": str(taint["key"]), "operator": "Exists"}
        if taint.get("effect"):
            toleration["effect"] = str(taint["effect"])
        if toleration not in seen:
            seen.append(toleration)
    return seen


def node_pod_spec(pod_name: str, node: str, image: str, tolerations: list[dict[str, Any]],
                  privileged: bool, idle_lifetime: int,
                  access: NodeAccess = NodeAccess.NETWORK) -> dict[str, Any]:
    """The capture pod for `node` (pure). Its process is the same bounded-lifetime loop as
    the ephemeral container's: if zsniff vanishes before deleting the pod, it stops by itself
    `idle_lifetime` seconds after the last capture (restartPolicy Never keeps it stopped)."""
    security: dict[str, Any] = ({"privileged": True} if privileged
                                else {"capabilities": {"add": list(access.capabilities)}})
    host: dict[str, Any] = (
        # hostNetwork pods get the node's resolv.conf otherwise; tcpdump resolves nothing
        # (-n), this only keeps the pod like any other for the shell loop.
        {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
        if access is NodeAccess.NETWORK else {"hostPID": True})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "labels": {NODE_LABEL: node}},
        "spec": {
            "nodeName": node,
            **host,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": tolerations,
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", LIFETIME_SCRIPT, "zsniff", CONTAINER,
                            str(idle_lifetime)],
                "securityContext": security,
                "resources": {},
                "terminationMessagePolicy": "File",
            }],
        },
    }


def read_node(kube: KubeClient, name: str) -> JSON:
    try:
        return kube.get(f'get node "{name}"', api_path("nodes", name))
    except ZsniffError as err:
        if err.status == ExitStatus.NOT_FOUND:
            raise ZsniffError(f'node "{name}" not found', "list them with: kubectl get nodes",
                              ExitStatus.NOT_FOUND) from err
        if err.status == ExitStatus.FORBIDDEN:
            raise ZsniffError(
                err.message,
                "node capture needs `get` on nodes (to pin the capture pod and tolerate the "
                f"node's taints): kubectl auth can-i get nodes/{name}",
                ExitStatus.FORBIDDEN) from err
        raise


def psa_refusal(namespace: str, level: str | None,
                access: NodeAccess = NodeAccess.NETWORK) -> ZsniffError | None:
    """PodSecurity below `privileged` forbids host namespaces and added capabilities: say so
    before any pod is made (None: unlabelled, privileged, or not readable; creation tells)."""
    if level not in ("baseline", "restricted"):
        return None
    return ZsniffError(
        f'namespace "{namespace}" enforces PodSecurity "{level}": it forbids the node capture '
        f"pod ({access.wanted}); no pod was made",
        "give --capture-namespace a namespace at the privileged level, or ask an admin: "
        f"kubectl label ns {namespace} {PSA_LABEL}=privileged --overwrite",
        ExitStatus.POD_SECURITY,
    )


# What a capture pod needs in its namespace, as (verb, resource, subresource): made, watched
# until it runs, exec'd into, and deleted at the end.
CAPTURE_POD_RIGHTS = (("create", "pods", ""), ("get", "pods", ""), ("watch", "pods", ""),
                      ("create", "pods", "exec"), ("delete", "pods", ""))
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def refuse_missing_rights(kube: KubeClient, namespace: str, access: NodeAccess) -> None:
    """Ask the API (a SelfSubjectAccessReview, allowed to every user) for each right a capture
    pod needs, before one is made: a pod zsniff could make but not delete would be left behind.
    A review that cannot be asked is no refusal: the requests themselves then tell."""
    missing = []
    for verb, resource, subresource in CAPTURE_POD_RIGHTS:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb,
                                                "resource": resource,
                                                "subresource": subresource}}}
        try:
            review = kube.request("review the capture pod's rights", "POST",
                                  ACCESS_REVIEW_PATH, None, body)
        except ZsniffError:
            return
        if field(review, "status", "allowed") is False:
            missing.append(f"{verb} {resource}/{subresource}" if subresource
                           else f"{verb} {resource}")
    if missing:
        first = missing[0].split()
        raise ZsniffError(
            f'forbidden to {", ".join(missing)} in namespace "{namespace}": the node capture '
            f"pod ({access.value}) could not be run and removed; no pod was made",
            "a capture pod needs `create`, `get`, `watch` and `delete` on pods and `create` "
            f"on pods/exec there: kubectl auth can-i {first[0]} {first[1]} -n {namespace}; "
            "or pick another with --capture-namespace",
            ExitStatus.FORBIDDEN)


def create_node_pod(kube: KubeClient, namespace: str, node_name: str,
                    tolerations: list[dict[str, Any]], opts: InjectOptions, progress: Progress,
                    access: NodeAccess = NodeAccess.NETWORK) -> JSON:
    """Make the capture pod on `node_name` in `namespace` and wait until it runs. A pod that
    fails to start is deleted before the error is raised."""
    name = f"{CONTAINER_PREFIX}{node_name[:40].rstrip('-.')}-{secrets.token_hex(3)}"
    body = node_pod_spec(name, node_name, opts.image, tolerations, opts.privileged,
                         opts.idle_lifetime, access)
    try:
        kube.request("create the node capture pod", "POST",
                     api_path("pods", namespace=namespace), None, body)
    except ZsniffError as err:
        if err.status == ExitStatus.POD_SECURITY:
            # The API's own words name each rule broken (host namespaces, capabilities).
            said = err.message.partition("violates PodSecurity")[2].strip()
            raise ZsniffError(
                f'PodSecurity in namespace "{namespace}" refused the node capture pod '
                f"({access.wanted})"
                + (f": violates PodSecurity {said}" if said else ""),
                "give --capture-namespace a namespace at the privileged level, or ask an "
                f"admin: kubectl label ns {namespace} {PSA_LABEL}=privileged --overwrite",
                ExitStatus.POD_SECURITY) from err
        if err.status == ExitStatus.FORBIDDEN:
            raise ZsniffError(
                f'forbidden to create pods in namespace "{namespace}" (a node capture pod, '
                f"{access.value})",
                "node capture needs `create`, `get`, `watch` and `delete` on pods and `create` "
                f"on pods/exec there: kubectl auth can-i create pods -n {namespace}; or pick "
                "another with --capture-namespace",
                ExitStatus.FORBIDDEN) from err
        if err.status == ExitStatus.NOT_FOUND:
            raise ZsniffError(f'namespace "{namespace}" not found (for the node capture pod)',
                              "give an existing one with --capture-namespace",
                              ExitStatus.NOT_FOUND) from err
        raise
    except BaseException:
        # Ctrl-C while the request was out: the server may have made the pod all the same.
        _delete_on_the_way_out(kube, namespace, name, progress)
        raise
    try:
        # Inside the try: a Ctrl-C that lands while this line is written must remove the pod.
        progress(f"made capture pod {namespace}/{name} on node {node_name} ({access.value})")
        return _wait_running(kube, namespace, name, opts.start_timeout, progress)
    except BaseException:
        _delete_on_the_way_out(kube, namespace, name, progress)
        raise


def _delete_on_the_way_out(kube: KubeClient, namespace: str, name: str,
                           progress: Progress) -> None:
    """Delete the pod while another error is on its way out: that error stays the one
    reported, a failed deletion is said beside it."""
    try:
        delete_node_pod(kube, namespace, name, progress)
    except ZsniffError as err:
        progress(f"{err.message}; {err.hint}")


def _wait_running(kube: KubeClient, namespace: str, name: str, timeout: float,
                  progress: Progress) -> JSON:
    deadline = time.monotonic() + timeout
    said = ""
    for pod in pod_versions(kube, namespace, name, deadline=deadline):
        if pod is None:
            raise ZsniffError(f'the capture pod "{name}" went away while starting',
                              "something deleted it: try again", ExitStatus.NOT_FOUND)
        phase = str(field(pod, "status", "phase") or "")
        for status in field(pod, "status", "containerStatuses") or ():
            state = status.get("state") or {}
            if "running" in state and phase == "Running":
                return pod
            reason = str(field(state, "waiting", "reason") or "")
            if reason and reason != said:
                progress(f"capture pod waiting: {reason}")
                said = reason
            if reason in FATAL_WAITING:
                raise ZsniffError(f"cannot pull the capture image: {reason}",
                                  "check --image and that the node can reach its registry",
                                  ExitStatus.IMAGE_PULL)
        if phase in ("Failed", "Succeeded"):
            reason = str(field(pod, "status", "reason") or field(pod, "status", "message")
                         or phase)
            raise ZsniffError(f"the node capture pod stopped before the capture: {reason}",
                              "see kubectl get events for the node",
                              ExitStatus.CAPTURE_FAILED)
    raise ZsniffError(f"the node capture pod did not start within {timeout:g}s"
                      + (f" (last state: {said})" if said else ""),
                      "raise --start-timeout", ExitStatus.START_TIMEOUT)


def delete_node_pod(kube: KubeClient, namespace: str, name: str, progress: Progress,
                    timeout: float = 60.0) -> None:
    """Delete the capture pod and wait until the API no longer has it: a deletion only asked
    for is not a pod gone (the kubelet still stops its container first)."""
    path = api_path("pods", name, namespace=namespace)
    try:
        kube.request("delete the node capture pod", "DELETE", path,
                     {"gracePeriodSeconds": 1})
    except ZsniffError as err:
        if err.status != ExitStatus.NOT_FOUND:
            raise ZsniffError(
                f'could not delete the node capture pod {namespace}/{name}: {err.message}',
                f"delete it yourself: kubectl delete pod -n {namespace} {name} (it stops by "
                "itself after --idle-lifetime)",
                err.status) from err
        return
    deadline = time.monotonic() + timeout
    for item in list_and_watch(kube, "pods", api_path("pods", namespace=namespace),
                               deadline=deadline, fieldSelector=f"metadata.name={name}"):
        if (isinstance(item, Listed) and not item.items) or (
                not isinstance(item, Listed) and item.type == "DELETED"):
            progress(f"capture pod {namespace}/{name} deleted (verified gone)")
            return
    raise ZsniffError(
        f"the node capture pod {namespace}/{name} was still there {timeout:g}s after its "
        "deletion",
        f"check with: kubectl get pod -n {namespace} {name}", ExitStatus.CAPTURE_FAILED)
