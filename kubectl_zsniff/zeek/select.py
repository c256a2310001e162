"""The volume knob: which Zeek logs, and which of their rows, reach the outputs.

East/west captures make a lot of metadata; incident response wants some of it. A selection
names the logs to keep (`conn,dns,...`: Zeek's `_path`s) and, optionally, flows by what the
names say about their two ends. A row is kept when its log is wanted and, with flow rules, it
matches at least one of them; counts of kept and dropped rows are kept per log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kubectl_zsniff.names.map import PodName

#: The flow rules, as the command line spells them (`workload=NAME` and `namespace=NS` take a
#: value).
FLOW_RULES = ("leaves-namespace", "unknown", "workload=NAME", "namespace=NS")


class SelectionError(ValueError):
    """A rule that is not one of FLOW_RULES (the CLI turns it into a usage error)."""


@dataclass(frozen=True)
class FlowRule:
    kind: str  # "leaves-namespace" | "unknown" | "workload" | "namespace"
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> FlowRule:
        key, eq, value = text.strip().partition("=")
        if key in ("leaves-namespace", "unknown") and not eq:
            return cls(key)
        if key in ("workload", "namespace") and eq and value:
            return cls(key, value)
        raise SelectionError(f"not a flow rule: {text!r} (one of {', '.join(FLOW_RULES)})")

    def matches(self, orig: PodName | None, resp: PodName | None) -> bool:
        if self.kind == "unknown":
            # An address no pod, service or node of the cluster owns: outside, or not known yet.
            return orig is None or resp is None
        if self.kind == "leaves-namespace":
            spaces = (_namespace(orig), _namespace(resp))
            return spaces[0] != spaces[1] and any(s is not None for s in spaces)
        if self.kind == "namespace":
            return self.value in (_namespace(orig), _namespace(resp))
        return _is_workload(orig, self.value) or _is_workload(resp, self.value)


def _namespace(name: PodName | None) -> str | None:
    return None if name is None else name.namespace


def _is_workload(name: PodName | None, wanted: str) -> bool:
    """`deployment/web`, `web` (any kind), or the pod itself (`NS/POD`)."""
    if name is None:
        return False
    if name.name == wanted:
        return True
    workload = name.workload
    return workload is not None and (workload == wanted or workload.split("/", 1)[-1] == wanted)


@dataclass
class LogCounts:
    kept: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class RowSelection:
    logs: frozenset[str] | None = None  # None: every log
    flows: tuple[FlowRule, ...] = ()

    @classmethod
    def parse(cls, logs: str | None, flows: Iterable[str] = ()) -> RowSelection:
        wanted = None
        if logs:
            wanted = frozenset(p.strip() for p in logs.split(",") if p.strip())
            if not wanted:
                raise SelectionError(f"no log named in {logs!r} (e.g. conn,dns,http)")
        return cls(wanted, tuple(FlowRule.parse(f) for f in flows))

    @property
    def everything(self) -> bool:
        return self.logs is None and not self.flows

    def wants_log(self, path: str | None) -> bool:
        return self.logs is None or (path is not None and path in self.logs)

    def keeps(self, path: str | None, endpoints: bool, orig: PodName | None,
              resp: PodName | None) -> bool:
        """A row of log `path`; `endpoints`: whether it has id.orig_h/id.resp_h at all (rows
        without are no flow, so flow rules drop them)."""
        if not self.wants_log(path):
            return False
        if not self.flows:
            return True
        return endpoints and any(rule.matches(orig, resp) for rule in self.flows)


@dataclass
class SelectionCounts:
    """Kept and dropped rows per log (`_path`)."""

    logs: dict[str, LogCounts] = field(default_factory=dict)

    def count(self, path: str | None, kept: bool) -> None:
        entry = self.logs.setdefault(path or "-", LogCounts())
        if kept:
            entry.kept += 1
        else:
            entry.dropped += 1

    def text(self) -> str:
        """`conn 12 kept, 30 dropped; dns 4 kept` (for the summary)."""
        parts = []
        for path, c in sorted(self.logs.items()):
            parts.append(f"{path} {c.kept:,} kept" + (f", {c.dropped:,} dropped"
                                                      if c.dropped else ""))
        return "; ".join(parts)


__all__ = ["FLOW_RULES", "FlowRule", "LogCounts", "RowSelection", "SelectionCounts",
           "SelectionError"]
