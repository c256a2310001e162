"""Targets in kubectl's syntax: every kind and spelling, refused kinds, mixed lists, selectors,
and the command line's reading of them (exit 2 with a hint, before any request)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.targets import (
    DAEMONSET,
    DEPLOYMENT,
    JOB,
    NODE,
    POD,
    REPLICASET,
    SERVICE,
    STATEFULSET,
    Kind,
    Target,
    TargetRef,
    host_network_note,
    parse_target,
    parse_targets,
    selector_string,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# kubectl's spellings of each kind (kubectl api-resources: NAME, SHORTNAMES, singular), with
# the API group where the kind has one.
SPELLINGS: list[tuple[str, Kind]] = [
    *[(w, POD) for w in ("po", "pod", "pods")],
    *[(w, DEPLOYMENT) for w in ("deploy", "deployment", "deployments", "deploy.apps",
                                "deployment.apps", "deployments.apps")],
    *[(w, STATEFULSET) for w in ("sts", "statefulset", "statefulsets", "statefulsets.apps")],
    *[(w, DAEMONSET) for w in ("ds", "daemonset", "daemonsets", "daemonsets.apps")],
    *[(w, REPLICASET) for w in ("rs", "replicaset", "replicasets", "replicasets.apps")],
    *[(w, JOB) for w in ("job", "jobs", "job.batch", "jobs.batch")],
    *[(w, SERVICE) for w in ("svc", "service", "services")],
]


@pytest.mark.parametrize(("word", "kind"), SPELLINGS, ids=[w for w, _ in SPELLINGS])
def test_every_kubectl_spelling_names_its_kind(word: str, kind: Kind) -> None:
    assert parse_target(f"{word}/web-1") == TargetRef(kind, "web-1")
    assert parse_target(f"{word.upper()}/web-1").kind is kind  # kubectl ignores case here
    assert parse_target(f"{word}/shop/web-1") == TargetRef(kind, "web-1", "shop")


@pytest.mark.parametrize(("word", "expected"), [
    ("web-7d4b9", TargetRef(POD, "web-7d4b9")),
    ("shop/web-7d4b9", TargetRef(POD, "web-7d4b9", "shop")),  # NS/POD as zsniff prints pods
    ("pod/shop/web", TargetRef(POD, "web", "shop")),
    ("web.example-1", TargetRef(POD, "web.example-1")),  # names are DNS subdomains
])
def test_pods_are_named_as_before(word: str, expected: TargetRef) -> None:
    assert parse_target(word) == expected


@pytest.mark.parametrize(("word", "words_in_message", "words_in_hint"), [
    ("cronjob/nightly", ("cannot capture cronjob/nightly",), ("job/NAME",)),
    ("cj/nightly", ("cannot capture",), ("job/NAME",)),
    ("ns/shop", ("cannot capture",), ("-n NS",)),
    ("ingress/front", ("cannot capture",), ("svc/NAME",)),
    ("rc/old", ("cannot capture",), ("-l",)),
    ("Shop_Ns/web", ("neither a kind nor a namespace",), ("deploy/NAME", "svc/NAME")),
    ("deploy/", ("cannot read the target",), ()),
    ("deploy/a/b/c", ("cannot read the target",), ()),
    ("deploy/Web", ("not a Kubernetes object name",), ()),
    ("deploy/bad_ns/web", ("not a namespace name",), ()),
])
def test_what_cannot_be_captured_is_a_usage_error_with_a_way_out(
    word: str, words_in_message: tuple[str, ...], words_in_hint: tuple[str, ...]
) -> None:
    with pytest.raises(ZsniffError) as caught:
        parse_target(word)
    err = caught.value
    assert err.status == ExitStatus.USAGE
    for w in words_in_message:
        assert w in err.message
    assert err.hint
    for w in words_in_hint:
        assert w in err.hint


@pytest.mark.parametrize("word", ["node/worker-1", "no/worker-1", "nodes/worker-1"])
def test_a_node_is_a_target_in_kubectl_spellings(word: str) -> None:
    ref = parse_target(word)
    assert ref.kind is NODE and ref.name == "worker-1" and ref.namespace is None


def test_a_node_in_a_namespace_is_refused() -> None:
    with pytest.raises(ZsniffError) as caught:
        parse_target("node/shop/worker-1")
    assert caught.value.status == ExitStatus.USAGE
    assert "node/NAME" in caught.value.message


def test_mixed_lists_keep_their_order_and_name_each_object_once() -> None:
    refs = parse_targets(["web-0", "deploy/api", "svc/shop/checkout", "pod/web-0",
                          "deployment/api", "tools/client", "sts/db"])
    assert refs == [
        TargetRef(POD, "web-0"),
        TargetRef(DEPLOYMENT, "api"),
        TargetRef(SERVICE, "checkout", "shop"),
        TargetRef(POD, "client", "tools"),
        TargetRef(STATEFULSET, "db"),
    ]


def test_labels_say_what_was_named() -> None:
    assert TargetRef(DEPLOYMENT, "api").label("shop") == "deployment/api"
    assert TargetRef(SERVICE, "checkout", "other").label("shop") == "service/checkout in other"
    assert TargetRef(POD, "web").label("shop") == "shop/web"


@pytest.mark.parametrize(("selector", "plain", "expected"), [
    ({"matchLabels": {"app": "web", "tier": "front"}}, False, "app=web,tier=front"),
    ({"matchLabels": {"app": "web"},
      "matchExpressions": [{"key": "track", "operator": "In", "values": ["stable", "canary"]},
                           {"key": "env", "operator": "NotIn", "values": ["dev"]},
                           {"key": "owner", "operator": "Exists"},
                           {"key": "legacy", "operator": "DoesNotExist"}]}, False,
     "app=web,track in (canary,stable),env notin (dev),owner,!legacy"),
    ({"app": "web"}, True, "app=web"),  # a Service's spec.selector is a plain map
    # a label literally called matchLabels, in a Service, is a label like any other
    ({"matchLabels": "x"}, True, "matchLabels=x"),
    ({}, True, ""),
    (None, False, ""),
])
def test_workload_selectors_become_label_selectors(selector: object, plain: bool,
                                                   expected: str) -> None:
    assert selector_string(selector, plain_map=plain) == expected


def test_paths_are_the_kinds_api_groups() -> None:
    assert DEPLOYMENT.path("shop", "web") == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert JOB.path("shop", "nightly") == "/apis/batch/v1/namespaces/shop/jobs/nightly"
    assert SERVICE.path("shop", "web") == "/api/v1/namespaces/shop/services/web"
    assert DEPLOYMENT.resource == "deployments.apps" and SERVICE.resource == "services"


@pytest.mark.parametrize(("args", "words"), [
    (["cronjob/nightly"], ("cannot capture cronjob/nightly", "hint: a CronJob has no pods")),
    (["web", "deploy/Bad"], ("not a Kubernetes object name", "hint: zsniff captures")),
    (["leftovers", "deploy/web"], ("leftovers lists capture containers of pods",)),
])
def test_the_command_line_refuses_bad_targets_before_any_request(
    args: list[str], words: tuple[str, ...]
) -> None:
    # No kubeconfig exists: a request would fail differently (exit 2 with a kubeconfig error
    # naming the file, or 12); these fail on the words alone.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("KUBECONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", "from kubectl_zsniff.cli.app import main; main()", *args,
         "--kubeconfig", "/nonexistent/kc"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
    for w in words:
        assert w in result.stderr
    assert "kubeconfig" not in result.stderr


def test_a_host_network_pod_is_said_to_carry_the_nodes_traffic() -> None:
    from kubectl_zsniff.kube.pod import describe_pod

    pod = {"metadata": {"namespace": "kube-system", "name": "proxy-1"},
           "spec": {"nodeName": "worker-1", "hostNetwork": True, "containers": [{"name": "p"}]},
           "status": {"phase": "Running"}}
    note = host_network_note(Target(pod, describe_pod(pod), "p"))
    assert note is not None
    assert "kube-system/proxy-1 uses the host network" in note and "worker-1" in note
    pod["spec"]["hostNetwork"] = False
    assert host_network_note(Target(pod, describe_pod(pod), "p")) is None
