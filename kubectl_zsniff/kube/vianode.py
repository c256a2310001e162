"""--via-node: pods captured from a capture pod on their node, their own spec left unchanged.

For pods whose containers may not capture (PodSecurity `restricted`, a runtime that drops
NET_RAW): one hostPID capture pod per node, in a namespace where PodSecurity allows it, runs
tcpdump inside each target pod's network namespace (kube/container.py
VIA_NODE_CAPTURE_SCRIPT). The capture pods are made as the first target on a node needs one,
and all deleted (and seen gone) at the end.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, field
from kubectl_zsniff.kube.nodecapture import (
    CONTAINER,
    NodeAccess,
    Progress,
    create_node_pod,
    delete_node_pod,
)
from kubectl_zsniff.kube.pod import CapturePlace, PodInfo, describe_pod
from kubectl_zsniff.options import InjectOptions


class ViaNodePods:
    """The capture pods of one --via-node capture, one per node."""

    def __init__(self, kube: KubeClient, namespace: str, opts: InjectOptions,
                 progress: Progress) -> None:
        self.kube = kube
        self.namespace = namespace
        self.opts = opts
        self.progress = progress
        self._by_node: dict[str, str] = {}
        # Held while a capture pod starts: two targets on one node (pods joining in
        # parallel) must not make two capture pods there.
        self._lock = threading.Lock()
        self._closed = False

    def place(self, pod: JSON) -> PodInfo:
        """`pod` as the capture sees it: itself, captured from its node's capture pod."""
        info = describe_pod(pod)
        if not info.node:
            raise ZsniffError(
                f"pod {info.namespace}/{info.name} is not on a node yet: --via-node captures "
                "it from its node", "wait until it is scheduled (kubectl get pod -o wide)",
                ExitStatus.POD_NOT_RUNNING)
        if not info.uid:
            raise ZsniffError(f"pod {info.namespace}/{info.name} has no UID in the API's answer",
                              "try again, or --debug", ExitStatus.CAPTURE_FAILED)
        with self._lock:
            if self._closed:
                raise ZsniffError("the capture is ending", "", ExitStatus.INTERRUPTED)
            capture_pod = self._by_node.get(info.node)
            if capture_pod is None:
                made = create_node_pod(self.kube, self.namespace, info.node,
                                       _tolerations(pod), self.opts, self.progress,
                                       NodeAccess.PODS)
                capture_pod = str(field(made, "metadata", "name"))
                self._by_node[info.node] = capture_pod
        return replace(info, via=CapturePlace(self.namespace, capture_pod, CONTAINER))

    def delete_all(self) -> list[ZsniffError]:
        """Delete every capture pod made (each verified gone); the failures, for the summary."""
        with self._lock:
            self._closed = True
            names, self._by_node = list(self._by_node.values()), {}
        failures = []
        for name in names:
            try:
                delete_node_pod(self.kube, self.namespace, name, self.progress)
            except ZsniffError as err:
                failures.append(err)
        return failures


def _tolerations(pod: JSON) -> list[dict[str, Any]]:
    """The target's own: it runs on that node, so they are what the node's taints need, and
    no more than the target already has."""
    return [dict(t) for t in field(pod, "spec", "tolerations") or () if isinstance(t, dict)]
