"""Strategic merge patch and JSON merge patch, enough for kubectl apply and kubectl debug.

Strategic merge: maps merge recursively, ``null`` deletes, lists of objects with a known merge key
merge element by element (``$setElementOrder/<field>`` gives the final order, ``$patch: delete``
removes an element), other lists are replaced.  Directive keys never reach the stored object.
"""

from __future__ import annotations

import copy
from typing import Any

# Field name -> merge key, as in the core/v1 Go types' patchMergeKey tags.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "conditions": "type", "containerStatuses": "name",
    "ephemeralContainerStatuses": "name", "initContainerStatuses": "name",
    "tolerations": "key", "hostAliases": "ip", "readinessGates": "conditionType",
}


def json_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge(out.get(k), v)
    return out


def _merge_list(field: str, cur: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(p, dict) for p in patch):
        return copy.deepcopy(patch)
    out = [copy.deepcopy(c) for c in cur]
    for p in patch:
        kv = p.get(key)
        idx = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == kv), None)
        if p.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge({}, p))
        else:
            out[idx] = strategic_merge(out[idx], p)
    if order:
        rank = {o.get(key): i for i, o in enumerate(order) if isinstance(o, dict)}
        out.sort(key=lambda e: rank.get(e.get(key), len(rank)))
    return out


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    if patch.get("$patch") == "replace":
        out = {}
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list):
            cur = out.get(k)
            out[k] = _merge_list(k, cur if isinstance(cur, list) else [], v, orders.get(k))
        elif isinstance(v, dict):
            out[k] = strategic_merge(out.get(k), v)
        else:
            out[k] = v
    # An element order for a list the patch did not touch still reorders it.
    for k, order in orders.items():
        if k not in patch and isinstance(out.get(k), list):
            out[k] = _merge_list(k, out[k], [], order)
    return out
