"""The node capture pod, as sent to the API (pure): on the node's network, pinned to the node,
tolerating that node's taints, with no more privilege than capture needs; and what PodSecurity
levels refuse it before any pod is made."""

from __future__ import annotations

import pytest

from kubectl_zsniff.errors import ExitStatus
from kubectl_zsniff.kube.nodecapture import (
    CONTAINER,
    NODE_LABEL,
    NodeAccess,
    node_pod_spec,
    psa_refusal,
    tolerations_for,
)
from kubectl_zsniff.kube.scripts import LIFETIME_SCRIPT

TAINTS = [
    {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "db", "effect": "NoExecute"},
    {"key": "dedicated", "value": "db", "effect": "NoExecute"},  # listed twice: once
]


def test_the_pod_is_on_the_nodes_network_pinned_to_it_and_not_privileged() -> None:
    pod = node_pod_spec("zsniff-n1-abc", "n1", "img:1", [], privileged=False, idle_lifetime=600)
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["nodeName"] == "n1"  # no scheduler: the pod cannot land elsewhere
    assert spec["restartPolicy"] == "Never"  # once it stops by itself, it stays stopped
    assert spec["automountServiceAccountToken"] is False  # tcpdump needs no API token
    assert not spec.get("hostPID") and not spec.get("volumes")
    assert pod["metadata"] == {"name": "zsniff-n1-abc", "labels": {NODE_LABEL: "n1"}}
    (container,) = spec["containers"]
    assert container["name"] == CONTAINER and container["image"] == "img:1"
    assert container["securityContext"] == {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
    # The same bounded lifetime as the ephemeral container: it ends 600 s after the last
    # capture if zsniff never gets to delete it.
    assert container["command"] == ["sh", "-c", LIFETIME_SCRIPT, "zsniff", CONTAINER, "600"]


def test_privileged_only_when_asked_and_then_without_added_capabilities() -> None:
    pod = node_pod_spec("p", "n1", "img:1", [], privileged=True, idle_lifetime=60)
    assert pod["spec"]["containers"][0]["securityContext"] == {"privileged": True}


def test_it_tolerates_the_nodes_own_taints_and_no_others() -> None:
    assert tolerations_for(TAINTS) == [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
         "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
    ]
    pod = node_pod_spec("p", "n1", "img:1", tolerations_for(TAINTS), privileged=False,
                        idle_lifetime=60)
    assert pod["spec"]["tolerations"] == tolerations_for(TAINTS)
    assert tolerations_for([]) == []  # an untainted node: no blanket `operator: Exists`


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_baseline_and_restricted_refuse_it_with_the_way_out(level: str) -> None:
    err = psa_refusal("apps", level)
    assert err is not None and err.status == ExitStatus.POD_SECURITY
    assert f'"apps" enforces PodSecurity "{level}"' in err.message
    assert "hostNetwork" in err.message and "no pod was made" in err.message
    assert "--capture-namespace" in err.hint
    assert "pod-security.kubernetes.io/enforce=privileged" in err.hint


@pytest.mark.parametrize("level", [None, "privileged"])
def test_privileged_or_unlabelled_namespaces_are_not_refused_beforehand(
        level: str | None) -> None:
    assert psa_refusal("apps", level) is None


def test_the_via_node_pod_shares_the_nodes_processes_not_its_network() -> None:
    """--via-node: hostPID to find the target pod's processes, SYS_ADMIN and SYS_PTRACE to
    enter their network namespace; neither the node's network nor privileged by default."""
    tolerations = [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]
    pod = node_pod_spec("p", "n1", "img:1", tolerations, privileged=False, idle_lifetime=60,
                        access=NodeAccess.PODS)
    spec = pod["spec"]
    assert spec["hostPID"] is True and not spec.get("hostNetwork")
    assert "dnsPolicy" not in spec
    assert spec["tolerations"] == tolerations
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "capabilities": {"add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW"]}}
    privileged = node_pod_spec("p", "n1", "img:1", [], privileged=True, idle_lifetime=60,
                               access=NodeAccess.PODS)
    assert privileged["spec"]["containers"][0]["securityContext"] == {"privileged": True}


def test_a_via_node_refusal_names_what_the_pod_would_ask() -> None:
    err = psa_refusal("apps", "baseline", NodeAccess.PODS)
    assert err is not None and err.status == ExitStatus.POD_SECURITY
    assert "hostPID with SYS_ADMIN, SYS_PTRACE, NET_ADMIN and NET_RAW" in err.message
    assert "--capture-namespace" in err.hint
