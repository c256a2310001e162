"""PodSecurity admission (baseline/restricted) and a tiny RBAC deny table.

Messages follow k8s.io/pod-security-admission: ``violates PodSecurity "LEVEL:latest": `` followed
by ``reason (detail)`` per failed check, joined by ", ".  Ephemeral containers are checked like
any other container, on create and on the ephemeralcontainers subresource.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
LEVEL_LABEL = "pod-security.kubernetes.io/enforce"


def _q(items: list[str]) -> str:
    return ", ".join(f'"{i}"' for i in items)


def _sc(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("securityContext") or {}


def _caps(c: dict[str, Any], key: str) -> list[str]:
    return list((_sc(c).get("capabilities") or {}).get(key) or [])


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _plural(names: list[str], one: str = "container", many: str = "containers") -> str:
    return f"{one if len(names) == 1 else many} {_q(names)}"


def _baseline(spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    host = [f for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    if host:
        out.append(f"host namespaces ({', '.join(f'{h}=true' for h in host)})")
    priv = [c["name"] for c in _containers(spec) if _sc(c).get("privileged")]
    if priv:
        out.append(f"privileged ({_plural(priv)} must not set securityContext.privileged=true)")
    details = []
    for c in _containers(spec):
        add = _caps(c, "add")
        bad = [a for a in add if a not in BASELINE_CAPS]
        if bad:
            details.append(f'container "{c["name"]}" must not include {_q(bad)} '
                           "in securityContext.capabilities.add")
    if details:
        out.append(f"non-default capabilities ({'; '.join(details)})")
    hp = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if hp:
        out.append(f"hostPath volumes ({'volume' if len(hp) == 1 else 'volumes'} {_q(hp)})")
    return out


def _restricted(spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    cs = list(_containers(spec))
    ape = [c["name"] for c in cs if _sc(c).get("allowPrivilegeEscalation") is not False]
    if ape:
        out.append(f"allowPrivilegeEscalation != false ({_plural(ape)} must set "
                   "securityContext.allowPrivilegeEscalation=false)")
    details = []
    nodrop = [c["name"] for c in cs if "ALL" not in _caps(c, "drop")]
    if nodrop:
        details.append(f'{_plural(nodrop)} must set securityContext.capabilities.drop=["ALL"]')
    for c in cs:
        add = _caps(c, "add")
        bad = [a for a in add if a != "NET_BIND_SERVICE"]
        if bad:
            details.append(f'container "{c["name"]}" must not include {_q(bad)} '
                           "in securityContext.capabilities.add")
    if details:
        out.append(f"unrestricted capabilities ({'; '.join(details)})")
    if psc.get("runAsNonRoot") is not True:
        bad = [c["name"] for c in cs if _sc(c).get("runAsNonRoot") is not True]
        if bad:
            out.append("runAsNonRoot != true (pod or "
                       f"{_plural(bad)} must set securityContext.runAsNonRoot=true)")
    if ((psc.get("seccompProfile") or {}).get("type")) not in ("RuntimeDefault", "Localhost"):
        bad = [c["name"] for c in cs
               if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
               not in ("RuntimeDefault", "Localhost")]
        if bad:
            out.append("seccompProfile (pod or "
                       f"{_plural(bad)} must set securityContext.seccompProfile.type to "
                       '"RuntimeDefault" or "Localhost")')
    return out


def pod_security_violation(level: str | None, spec: dict[str, Any]) -> str | None:
    """The ``violates PodSecurity ...`` text, or None when the spec is allowed."""
    if level not in ("baseline", "restricted"):
        return None
    reasons = _baseline(spec)
    if level == "restricted":
        # The real evaluator orders checks by ID; baseline capability checks fold into the
        # restricted capability check there, so keep only one capabilities entry.
        reasons = [r for r in reasons if not r.startswith("non-default capabilities")]
        reasons += _restricted(spec)
    if not reasons:
        return None
    return f'violates PodSecurity "{level}:latest": ' + ", ".join(reasons)


# ---- RBAC ------------------------------------------------------------------------------------

# user -> set of (verb, resource) denied; everything else is allowed.
DENIED: dict[str, set[tuple[str, str]]] = {
    "admin": set(),
    "limited": {("patch", "pods/ephemeralcontainers"), ("update", "pods/ephemeralcontainers")},
}


def allowed(user: str, verb: str, resource: str) -> bool:
    return (verb, resource) not in DENIED.get(user, set())


def forbidden_message(user: str, verb: str, resource: str, namespace: str | None,
                      name: str | None) -> str:
    base = resource.split("/")[0]
    who = f'{base} "{name}"' if name else base
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return (f'{who} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group ""{scope}')
