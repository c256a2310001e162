"""What the user names, in kubectl's syntax, and the pods it stands for.

`POD`, `NS/POD`, `pod/POD`, `deploy/NAME`, `sts/`, `ds/`, `rs/`, `job/`, `svc/NAME` (kubectl's
long, plural and short names, with or without the API group: `deployments.apps/web`), several at
once and mixed with `-l`. Parsing is pure (the command line checks words before any request);
resolution reads each workload's selector (a Service's `spec.selector`) and lists its pods, the
way `kubectl logs deploy/NAME` picks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient, api_path, field
from kubectl_zsniff.kube.pod import PodInfo, check_capturable, describe_pod, get_pod

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kind:
    """A kind of object a target may name: where its objects live and what selects its pods."""

    name: str  # kubectl's singular name, as zsniff prints it
    short: str  # kubectl's short name (`deploy`)
    plural: str  # the REST resource (`deployments`)
    group_version: str  # "v1" (core) or "apps/v1"

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def path(self, namespace: str, name: str) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}/{quote(name, safe='')}"

    @property
    def resource(self) -> str:
        """The name `kubectl auth can-i` takes (`deployments.apps`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


POD = Kind("pod", "po", "pods", "v1")
DEPLOYMENT = Kind("deployment", "deploy", "deployments", "apps/v1")
STATEFULSET = Kind("statefulset", "sts", "statefulsets", "apps/v1")
DAEMONSET = Kind("daemonset", "ds", "daemonsets", "apps/v1")
REPLICASET = Kind("replicaset", "rs", "replicasets", "apps/v1")
JOB = Kind("job", "job", "jobs", "batch/v1")
SERVICE = Kind("service", "svc", "services", "v1")
# A node is no workload: it is captured through a pod of its own (kube/nodecapture.py).
NODE = Kind("node", "no", "nodes", "v1")
KINDS = (POD, DEPLOYMENT, STATEFULSET, DAEMONSET, REPLICASET, JOB, SERVICE)
WORKLOADS = tuple(k for k in KINDS if k is not POD)

# Every spelling kubectl accepts for a kind, with and without its group.
_BY_WORD: dict[str, Kind] = {}
for _kind in (*KINDS, NODE):
    for _word in {_kind.name, _kind.short, _kind.plural}:
        _BY_WORD[_word] = _kind
        if _kind.group:
            _BY_WORD[f"{_word}.{_kind.group}"] = _kind

# kubectl names zsniff knows but cannot capture (yet): what to do instead.
_REFUSED: dict[str, str] = {
    **dict.fromkeys(("cj", "cronjob", "cronjobs", "cronjob.batch", "cronjobs.batch"),
                    "a CronJob has no pods of its own: name one of its jobs, job/NAME "
                    "(kubectl get jobs)"),
    **dict.fromkeys(("ns", "namespace", "namespaces"),
                    "select a namespace's pods with -n NS -l SELECTOR (every pod: -l "
                    "'!zsniff-none' matches all)"),
    **dict.fromkeys(("rc", "replicationcontroller", "replicationcontrollers"),
                    "select its pods with -l (kubectl get rc NAME -o wide shows the selector)"),
    **dict.fromkeys(("ep", "endpoints", "ing", "ingress", "ingresses", "cm", "configmap",
                     "secret", "secrets", "sa", "serviceaccount", "pvc", "pv"),
                    "name a workload or a service instead: svc/NAME captures the pods "
                    "behind a service"),
}
CAN_NAME = "pods (NAME, NS/NAME, pod/NAME), " + ", ".join(
    f"{k.short}/NAME" if k.short != k.name else f"{k.name}/NAME" for k in WORKLOADS
) + ", node/NAME"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Object names (pods, workloads) are DNS subdomains: labels joined by dots.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class TargetRef:
    """One word of the command line: a kind, a name and (when the word says) a namespace."""

    kind: Kind
    name: str
    namespace: str | None = None

    def label(self, default_namespace: str | None = None) -> str:
        """As zsniff prints it: `NS/POD` for a pod, `deployment/NAME` (in NS) for the rest."""
        namespace = self.namespace or default_namespace
        if self.kind is POD:
            return f"{namespace}/{self.name}" if namespace else self.name
        where = f" in {namespace}" if namespace and namespace != default_namespace else ""
        return f"{self.kind.name}/{self.name}{where}"


def kind_for(word: str) -> Kind | None:
    """The kind a `KIND/` prefix names, in any of kubectl's spellings (None: not a kind)."""
    return _BY_WORD.get(word.lower())


def is_kind_word(word: str) -> bool:
    """A prefix kubectl would read as a kind (zsniff's or one it refuses), not a namespace."""
    lowered = word.lower()
    return lowered in _BY_WORD or lowered in _REFUSED


def parse_target(word: str) -> TargetRef:
    """`NAME`, `NS/NAME`, `KIND/NAME` or `KIND/NS/NAME`; a bad one is a usage error (exit 2)."""
    parts = word.split("/")
    if len(parts) > 3 or any(not p for p in parts):
        raise _bad_target(word, "a target is NAME, NS/NAME, KIND/NAME or KIND/NS/NAME")
    namespace: str | None = None
    if len(parts) == 1:
        kind, name = POD, parts[0]
    else:
        prefix = parts[0]
        known = kind_for(prefix)
        if known is None and prefix.lower() in _REFUSED:
            raise ZsniffError(
                f"cannot capture {prefix}/{'/'.join(parts[1:])}: zsniff captures {CAN_NAME}",
                _REFUSED[prefix.lower()],
                ExitStatus.USAGE,
            )
        if known is not None:
            kind = known
            if len(parts) == 3 and known is NODE:
                raise _bad_target(word, "a node belongs to no namespace: node/NAME")
            if len(parts) == 3:
                namespace, name = parts[1], parts[2]
            else:
                name = parts[1]
        elif len(parts) == 2 and _DNS_LABEL.match(prefix):
            kind, namespace, name = POD, prefix, parts[1]  # NS/POD, as zsniff prints pods
        else:
            raise _bad_target(word, f"{prefix!r} is neither a kind nor a namespace")
    if namespace is not None and not _DNS_LABEL.match(namespace):
        raise _bad_target(word, f"{namespace!r} is not a namespace name")
    if not _OBJECT_NAME.match(name):
        raise _bad_target(word, f"{name!r} is not a Kubernetes object name")
    return TargetRef(kind, name, namespace)


def _bad_target(word: str, why: str) -> ZsniffError:
    return ZsniffError(f"cannot read the target {word!r}: {why}",
                       f"zsniff captures {CAN_NAME}", ExitStatus.USAGE)


def parse_targets(words: Iterable[str]) -> list[TargetRef]:
    """Every target word, each parsed; the same object named twice counts once."""
    refs: list[TargetRef] = []
    for word in words:
        ref = parse_target(word)
        if ref not in refs:
            refs.append(ref)
    return refs


def selector_string(selector: Any, plain_map: bool = False) -> str:
    """A LabelSelector (matchLabels, matchExpressions), or with `plain_map` a Service's map of
    labels, as `-l` takes it. Empty: it selects nothing here (a Service's endpoints are then
    kept by hand)."""
    if not isinstance(selector, dict):
        return ""
    expressions: list[Any] = []
    if plain_map:
        labels = selector
    else:
        labels = selector.get("matchLabels") or {}
        expressions = selector.get("matchExpressions") or []
    terms = [f"{k}={v}" for k, v in sorted(labels.items())]
    for expr in expressions:
        key, op = str(expr.get("key")), str(expr.get("operator"))
        values = ",".join(sorted(str(v) for v in expr.get("values") or ()))
        terms.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}.get(op, ""))
    return ",".join(t for t in terms if t)


@dataclass(frozen=True)
class Target:
    pod: JSON  # the pod as read
    info: PodInfo
    container: str  # whose namespaces the capture container shares


def host_network_note(target: Target) -> str | None:
    """A hostNetwork pod shares the node's network: what is captured there is the node's."""
    if not field(target.pod, "spec", "hostNetwork"):
        return None
    info = target.info
    return (f"note: {info.namespace}/{info.name} uses the host network: its traffic is node "
            f"{info.node or '?'}'s, every pod on that network and the node itself")


@dataclass(frozen=True)
class PodSource:
    """Where pods come from besides named ones: a workload's or `-l`'s selector in a
    namespace (None: every namespace). What a capture watches to follow the set."""

    label: str  # `deployment/web`, or `-l app=web`
    namespace: str | None
    selector: str


@dataclass
class Resolution:
    targets: list[Target]
    sources: list[PodSource]


def workload_source(kube: KubeClient, ref: TargetRef, namespace: str) -> PodSource:
    """The selector of a workload or service, read from the API."""
    kind = ref.kind
    try:
        obj = kube.get(f"get {kind.name} {ref.name!r}", kind.path(namespace, ref.name))
    except ZsniffError as err:
        if err.status == ExitStatus.NOT_FOUND:
            raise ZsniffError(
                f'{kind.name} "{ref.name}" not found in namespace "{namespace}"',
                f"list them with: kubectl get {kind.plural} -n {namespace}",
                ExitStatus.NOT_FOUND,
            ) from err
        if err.status == ExitStatus.FORBIDDEN:
            raise ZsniffError(
                err.message,
                f"naming a {kind.name} needs `get` on {kind.resource} (and `list` on pods): "
                f"kubectl auth can-i get {kind.resource} -n {namespace}; or name its pods",
                ExitStatus.FORBIDDEN,
            ) from err
        raise
    selector = selector_string(field(obj, "spec", "selector"), plain_map=kind is SERVICE)
    if not selector:
        if kind is SERVICE:
            why = ("it has no selector (its endpoints are kept by hand, or it is an "
                   "ExternalName service)")
        else:
            why = "it has no pod selector"
        raise ZsniffError(
            f'{kind.name} "{ref.name}" in namespace "{namespace}" selects no pods: {why}',
            "name the pods it sends to (kubectl get endpointslices -n "
            f"{namespace} -l kubernetes.io/service-name={ref.name})" if kind is SERVICE
            else "name its pods, or select them with -l",
            ExitStatus.NOT_FOUND,
        )
    return PodSource(f"{kind.name}/{ref.name}", namespace, selector)


def resolve_targets(
    kube: KubeClient,
    namespace: str,
    words: tuple[str, ...],
    container: str | None,
    selector: str | None,
    all_namespaces: bool,
    max_pods: int,
    progress: Progress,
) -> Resolution:
    """The pods to capture: named pods (which must be capturable), then the running pods of
    each named workload and of `-l`, each pod once, in that order."""
    targets: list[Target] = []
    seen: set[tuple[str, str]] = set()
    sources: list[PodSource] = []
    for ref in parse_targets(words):
        where = ref.namespace or namespace
        if ref.kind is NODE:
            continue  # captured through a pod of its own: capture/session.py
        if ref.kind is POD:
            pod = get_pod(kube, where, ref.name)
            info = describe_pod(pod)
            if (info.namespace, info.name) not in seen:
                seen.add((info.namespace, info.name))
                targets.append(Target(pod, info, check_capturable(info, container)))
        else:
            sources.append(workload_source(kube, ref, where))
    if selector:
        sources.append(PodSource(f"-l {selector}", None if all_namespaces else namespace,
                                 selector))
    for source in sources:
        found, matched = _source_pods(kube, source, container, seen, progress)
        if not matched:
            raise _nothing_selected(source)
        targets.extend(found)
    if len(targets) > max_pods:
        raise ZsniffError(
            f"{len(targets)} pods to capture; zsniff captures at most {max_pods} at once",
            "narrow the selector, or raise --max-pods if you mean it",
            ExitStatus.USAGE,
        )
    return Resolution(targets, sources)


def _source_pods(kube: KubeClient, source: PodSource, container: str | None,
                 seen: set[tuple[str, str]], progress: Progress) -> tuple[list[Target], int]:
    """The running pods a source selects now, but those already taken; and how many running
    pods it selects in all (a service in front of a named deployment adds none, yet has
    pods)."""
    listed = kube.get("list pods", api_path("pods", namespace=source.namespace),
                      labelSelector=source.selector)
    found: list[Target] = []
    skipped: list[str] = []
    taken = 0
    for pod in listed.get("items") or ():
        info = describe_pod(pod)
        if field(pod, "metadata", "deletionTimestamp"):
            continue  # terminating: its traffic is ending, as kubectl's rollout sees it
        if (info.namespace, info.name) in seen:
            taken += 1
            continue
        try:
            chosen = check_capturable(info, container)
        except ZsniffError as err:
            skipped.append(f"{info.namespace}/{info.name} ({err.message})")
            continue
        seen.add((info.namespace, info.name))
        found.append(Target(pod, info, chosen))
    if skipped:
        progress(f"{source.label}: skipping " + "; ".join(skipped))
    return found, len(found) + taken


def _nothing_selected(source: PodSource) -> ZsniffError:
    where = "all namespaces" if source.namespace is None else f'namespace "{source.namespace}"'
    if source.label.startswith("-l "):
        return ZsniffError(
            f'no running pod matches the selector "{source.selector}" in {where}',
            "check the labels with: kubectl get pods --show-labels"
            + ("" if source.namespace is None else f" -n {source.namespace} (or use -A)"),
            ExitStatus.NOT_FOUND,
        )
    return ZsniffError(
        f"{source.label} has no running pod in {where} (selector {source.selector})",
        f"see its pods with: kubectl get pods -n {source.namespace} -l '{source.selector}'",
        ExitStatus.NOT_FOUND,
    )
