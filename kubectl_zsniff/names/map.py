"""The IP -> Kubernetes name interface shared by every output that puts pod names on traffic.

Kept deliberately tiny: the live cluster name book implements the same `lookup` and the Zeek
log enrichment only ever calls that one method.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PodName:
    """What an address is, in Kubernetes terms.

    `name` is `NS/POD`, `NS/svc/NAME` or `node/NAME`; `namespace` is None for nodes;
    `workload` (e.g. `deployment/web`) is optional because not every source knows it.
    """

    name: str
    namespace: str | None = None
    kind: str = "pod"  # "pod" | "service" | "node"
    workload: str | None = None
    node: str | None = None  # the node a pod runs on (a node's own name for a node)

    @classmethod
    def parse(cls, text: str, workload: str | None = None) -> PodName:
        """Build a PodName from the `NS/POD`, `NS/svc/NAME` or `node/NAME` text form."""
        parts = text.split("/")
        if len(parts) == 2 and parts[0] == "node":
            return cls(text, None, "node", workload)
        if len(parts) == 3 and parts[1] == "svc":
            return cls(text, parts[0], "service", workload)
        if len(parts) == 2:
            return cls(text, parts[0], "pod", workload)
        raise ValueError(f"not a NS/POD, NS/svc/NAME or node/NAME name: {text!r}")


@runtime_checkable
class NameMap(Protocol):
    """Anything that can name an address, optionally as of a time (epoch seconds)."""

    def lookup(self, ip: str, ts: float | None = None) -> PodName | None: ...


LookupFunc = Callable[[str, float | None], PodName | None]
NameSource = NameMap | LookupFunc


def normalize_ip(text: str) -> str | None:
    """Canonical text of an address, or None when `text` is not one.

    Zeek writes IPv6 compressed, a cluster API may not; IPv4-mapped IPv6 is the IPv4 address
    (dual-stack sockets show up that way) and a zone index does not identify a pod.
    """
    text = text.strip().split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def as_lookup(source: NameSource) -> LookupFunc:
    """Accept either a NameMap object or a plain function with the same signature."""
    if isinstance(source, NameMap):
        return source.lookup
    if callable(source):
        return source
    raise TypeError(f"not a name map: {source!r}")


class DictNameMap:
    """A fixed IP -> name table (tests, offline `enrich` with a saved table)."""

    def __init__(self, names: Mapping[str, PodName | str]) -> None:
        self._names: dict[str, PodName] = {}
        for ip, name in names.items():
            key = normalize_ip(ip)
            if key is None:
                raise ValueError(f"not an IP address: {ip!r}")
            self._names[key] = PodName.parse(name) if isinstance(name, str) else name

    @property
    def provides_workload(self) -> bool:
        """Whether workload columns are worth adding (a stable per-map schema, not per-row)."""
        return any(n.workload for n in self._names.values())

    def lookup(self, ip: str, ts: float | None = None) -> PodName | None:
        key = normalize_ip(ip)
        return None if key is None else self._names.get(key)

    def __len__(self) -> int:
        return len(self._names)
