"""Reading Kubernetes objects as the API server sends them (JSON, camelCase fields): what a
capture needs of pods, services, nodes and ephemeral containers, including the odd cases."""

from __future__ import annotations

import json
from typing import Any

from kubectl_zsniff.kube.client import api_path, field, pod_ips
from kubectl_zsniff.kube.container import container_state, find_reusable
from kubectl_zsniff.kube.namewatch import node_names, pod_names, service_names
from kubectl_zsniff.kube.pod import describe_pod
from kubectl_zsniff.names.map import PodName

# A pod as `kubectl get pod -o json` prints it (trimmed), made by a Deployment.
POD: dict[str, Any] = json.loads("""
{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {
    "name": "web-7d4b9c6f5-x2x8q", "namespace": "shop",
    "labels": {"app": "web", "pod-template-hash": "7d4b9c6f5"},
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": "web-7d4b9c6f5", "uid": "1", "controller": true}]
  },
  "spec": {
    "nodeName": "node-a",
    "containers": [{"name": "app", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}],
    "ephemeralContainers": [
      {"name": "zsniff-0a1b2c", "image": "docker.io/nicolaka/netshoot:v0.13"},
      {"name": "zsniff-dead00", "image": "docker.io/nicolaka/netshoot:v0.13"},
      {"name": "debugger-abc", "image": "docker.io/nicolaka/netshoot:v0.13"}
    ]
  },
  "status": {
    "phase": "Running", "podIP": "10.244.1.7",
    "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244::a:7"}],
    "ephemeralContainerStatuses": [
      {"name": "zsniff-dead00", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
      {"name": "zsniff-0a1b2c", "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}}},
      {"name": "debugger-abc", "state": {"running": {}}}
    ]
  }
}
""")


def test_describe_pod_reads_the_json_fields() -> None:
    info = describe_pod(POD)
    assert (info.namespace, info.name, info.node, info.phase) == (
        "shop", "web-7d4b9c6f5-x2x8q", "node-a", "Running")
    assert info.containers == ("app", "sidecar")
    assert info.pod_ips == ("10.244.1.7", "fd00:10:244::a:7")


def test_pod_ips_falls_back_to_pod_ip_and_to_nothing() -> None:
    assert pod_ips({"status": {"podIP": "10.0.0.9"}}) == ["10.0.0.9"]
    assert pod_ips({"status": {}}) == []
    assert pod_ips({}) == []


def test_a_pending_pod_without_status_is_described_not_crashed() -> None:
    info = describe_pod({"metadata": {"name": "p", "namespace": "n"},
                         "spec": {"containers": [{"name": "c"}]}})
    assert (info.phase, info.pod_ips, info.node) == ("Unknown", (), "")


def test_pod_names_name_the_workload_and_both_families() -> None:
    # The node it runs on comes along (the JSON stream's orig_node/resp_node).
    owner = PodName("shop/web-7d4b9c6f5-x2x8q", "shop", "pod", "deployment/web", "node-a")
    assert pod_names(POD) == [("10.244.1.7", owner), ("fd00:10:244::a:7", owner)]


def test_pods_that_own_no_address() -> None:
    finished = {**POD, "status": {**POD["status"], "phase": "Succeeded"}}
    host_network = {**POD, "spec": {**POD["spec"], "hostNetwork": True}}
    assert pod_names(finished) == []
    assert pod_names(host_network) == []  # the node's address is the node's, not the pod's
    assert pod_names({"metadata": {"name": "x", "namespace": "y"}}) == []


def test_workloads_other_than_deployments() -> None:
    stateful = {**POD, "metadata": {"name": "db-0", "namespace": "data", "ownerReferences": [
        {"kind": "StatefulSet", "name": "db"}]}}
    bare_rs = {**POD, "metadata": {"name": "r-1", "namespace": "d", "ownerReferences": [
        {"kind": "ReplicaSet", "name": "r"}]}}
    assert pod_names(stateful)[0][1].workload == "statefulset/db"
    assert pod_names(bare_rs)[0][1].workload == "replicaset/r"


def test_service_names_dual_stack_and_headless() -> None:
    svc = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"]}}
    headless = {"metadata": {"name": "db", "namespace": "data"},
                "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}
    owner = PodName("shop/svc/web", "shop", "service", None)
    assert service_names(svc) == [("10.96.0.10", owner), ("fd00:10:96::a", owner)]
    assert service_names(headless) == []


def test_node_names_keep_internal_and_external_addresses_only() -> None:
    node = {"metadata": {"name": "node-a"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.2"},
        {"type": "Hostname", "address": "node-a"},
        {"type": "ExternalIP", "address": "203.0.113.5"},
    ]}}
    owner = PodName("node/node-a", None, "node", None, "node-a")
    assert node_names(node) == [("10.0.0.2", owner), ("203.0.113.5", owner)]


def test_find_reusable_wants_a_running_zsniff_container_of_the_same_image() -> None:
    assert find_reusable(POD, "docker.io/nicolaka/netshoot:v0.13") == "zsniff-0a1b2c"
    assert find_reusable(POD, "busybox") is None  # another image: a new container
    assert find_reusable({"metadata": {}}, "busybox") is None


def test_container_state_of_each_kind() -> None:
    waiting = {"status": {"ephemeralContainerStatuses": [{"name": "zsniff-1", "state": {
        "waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}
    assert container_state(POD, "zsniff-0a1b2c") == ("running", "", "")
    assert container_state(POD, "zsniff-dead00") == ("terminated", "Completed", "")
    assert container_state(waiting, "zsniff-1") == ("waiting", "ErrImagePull", "not found")
    assert container_state(POD, "zsniff-none") == ("unknown", "", "")
    killed = {"status": {"ephemeralContainerStatuses": [{"name": "z", "state": {
        "terminated": {"exitCode": 137}}}]}}
    assert container_state(killed, "z") == ("terminated", "exit code 137", "")


def test_api_paths_escape_every_segment() -> None:
    assert api_path("pods") == "/api/v1/pods"
    assert api_path("pods", "web", "ephemeralcontainers", namespace="shop") == (
        "/api/v1/namespaces/shop/pods/web/ephemeralcontainers")
    assert api_path("pods", "a/b?c", namespace="x y") == "/api/v1/namespaces/x%20y/pods/a%2Fb%3Fc"


def test_field_walks_missing_and_non_mapping_values() -> None:
    assert field(POD, "spec", "nodeName") == "node-a"
    assert field(POD, "spec", "missing", "deeper") is None
    assert field(POD, "metadata", "name", "not-a-mapping") is None
