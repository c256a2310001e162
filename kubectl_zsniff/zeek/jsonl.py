"""Zeek logs as one stream of JSON lines for a SIEM: one row per line, pod names for both ends.

Each line is one JSON object: `_path` first (the log it came from, as Zeek's JSON streaming
writers put it), then Zeek's own fields, then the names of both ends and the kubectl context.
Zeek's fields are untouched: a JSON log's bytes are kept as Zeek wrote them (`_path` and the
names are spliced in); a TSV row becomes what Zeek's JSON writer writes for it (numbers as
Zeek printed them, T/F as true/false, sets and vectors as arrays, unset fields left out, `\\\\`
as one backslash and `\\xHH` escapes kept as text, as Zeek's JSON writer escapes them).

Names, per end (`orig_` and `resp_`), each only when known: `_pod` (`NS/POD`, `NS/svc/NAME` or
`node/NAME`, as in the enriched logs), `_namespace`, `_kind` (pod, service, node),
`_workload` (`deployment/web`), `_workload_kind` (`deployment`), `_node`; then `k8s_context`
on every row, so each line stands alone for a shipper that routes lines one by one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from kubectl_zsniff.names.map import LookupFunc, PodName, normalize_ip
from kubectl_zsniff.zeek.logs import (
    ORIG_H,
    RESP_H,
    TsvHeader,
    _parse_ts,
    _split_eol,
    is_log_name,
    open_log,
)
from kubectl_zsniff.zeek.select import RowSelection, SelectionCounts

_INTEGER = re.compile(rb"-?[0-9]+")
_REAL = re.compile(rb"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INTEGER_TYPES = frozenset({"count", "int", "port"})
_REAL_TYPES = frozenset({"double", "time", "interval"})


def path_of_file(name: str) -> str:
    """A log's `_path` from its file name: `conn.log`, `http.log.json`, a rotated
    `conn.2026-01-01-10-00-00.log.gz` are conn, http, conn (Zeek's paths have no dots)."""
    return name.split(".", 1)[0]


def endpoint_fields(side: str, name: PodName | None) -> list[tuple[str, str]]:
    if name is None:
        return []
    out = [(f"{side}_pod", name.name)]
    if name.namespace:
        out.append((f"{side}_namespace", name.namespace))
    out.append((f"{side}_kind", name.kind))
    if name.workload:
        out.append((f"{side}_workload", name.workload))
        out.append((f"{side}_workload_kind", name.workload.split("/", 1)[0]))
    if name.node:
        out.append((f"{side}_node", name.node))
    return out


@dataclass
class JsonStats:
    rows: int = 0
    named_rows: int = 0
    bad_lines: int = 0  # lines that are neither a header, a row its header describes, nor JSON
    counts: SelectionCounts = field(default_factory=SelectionCounts)


class JsonRows:
    """The lines of one log in, JSON lines out (push: `feed` one line at a time, any format)."""

    def __init__(
        self,
        lookup: LookupFunc | None,
        path: str,
        context: str | None = None,
        selection: RowSelection | None = None,
        stats: JsonStats | None = None,
    ) -> None:
        self.lookup = lookup
        self.file_path = path  # `_path` when the log does not say (JSON logs)
        self.context = context
        self.selection = selection or RowSelection()
        self.stats = stats or JsonStats()
        self._header = TsvHeader()
        self._block: TsvHeader | None = None  # the header of the rows that follow

    def lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        for line in lines:
            out = self.feed(line)
            if out is not None:
                yield out

    def feed(self, line: bytes) -> bytes | None:
        body, _ = _split_eol(line)
        if not body.strip():
            return None
        if body.startswith(b"#"):
            self._header.apply(body)
            if self._header.fields is not None:
                self._block = replace(self._header)
            return None
        if self._block is not None and self._block.fields:
            return self._tsv_row(body, self._block)
        if body.lstrip().startswith(b"{"):
            return self._json_row(body)
        self.stats.bad_lines += 1
        return None

    # -- rows ---------------------------------------------------------------------------------

    def _json_row(self, body: bytes) -> bytes | None:
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        start, end = body.find(b"{"), body.rfind(b"}")
        if not isinstance(obj, dict) or body[end + 1:].strip():
            self.stats.bad_lines += 1
            return None
        path = obj["_path"] if isinstance(obj.get("_path"), str) else self.file_path
        names = self._names(obj.get(ORIG_H), obj.get(RESP_H), _parse_ts(obj.get("ts")))
        if not self._kept(path, ORIG_H in obj and RESP_H in obj, names):
            return None
        head = [] if "_path" in obj else [b'"_path":' + _text(path)]
        inner = body[start + 1:end]
        parts = [*head, inner] if inner.strip() else head
        parts += self._added(names, obj.keys())
        return b"{" + b",".join(parts) + b"}\n"

    def _tsv_row(self, body: bytes, header: TsvHeader) -> bytes | None:
        fields = header.fields or []
        types = header.types or []
        cells = body.split(header.separator)
        if len(cells) != len(fields):
            self.stats.bad_lines += 1
            return None
        path = header.path or self.file_path
        values = dict(zip(fields, cells, strict=True))
        names = self._names(_address(values.get(ORIG_H), header),
                            _address(values.get(RESP_H), header),
                            _parse_ts(values["ts"]) if "ts" in values else None)
        if not self._kept(path, ORIG_H in values and RESP_H in values, names):
            return None
        parts = [b'"_path":' + _text(path)]
        for i, (name, cell) in enumerate(zip(fields, cells, strict=True)):
            value = tsv_value(cell, types[i] if i < len(types) else "string", header)
            if value is not None:
                parts.append(_text(name) + b":" + value)
        parts += self._added(names, set(fields))
        return b"{" + b",".join(parts) + b"}\n"

    def _names(self, orig: object, resp: object, ts: float | None
               ) -> tuple[PodName | None, PodName | None]:
        return self._name(orig, ts), self._name(resp, ts)

    def _name(self, addr: object, ts: float | None) -> PodName | None:
        if self.lookup is None or not isinstance(addr, str):
            return None
        ip = normalize_ip(addr)
        return None if ip is None else self.lookup(ip, ts)

    def _kept(self, path: str, endpoints: bool,
              names: tuple[PodName | None, PodName | None]) -> bool:
        self.stats.rows += 1
        kept = self.selection.keeps(path, endpoints, *names)
        self.stats.counts.count(path, kept)
        if kept and (names[0] is not None or names[1] is not None):
            self.stats.named_rows += 1
        return kept

    def _added(self, names: tuple[PodName | None, PodName | None],
               existing: Iterable[str]) -> list[bytes]:
        have = set(existing)
        pairs = endpoint_fields("orig", names[0]) + endpoint_fields("resp", names[1])
        if self.context:
            pairs.append(("k8s_context", self.context))
        return [_text(k) + b":" + _text(v) for k, v in pairs if k not in have]


def log_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named, and the logs directly in folders named (sorted, as `enrich` takes them)."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.is_file() and is_log_name(f.name))
        else:
            yield p


def logs_to_json(
    paths: Iterable[str | os.PathLike[str]],
    lookup: LookupFunc | None,
    write: Callable[[bytes], object],
    *,
    context: str | None = None,
    selection: RowSelection | None = None,
) -> tuple[JsonStats, list[tuple[Path, str]]]:
    """Every row of every log as JSON lines through `write` (whole lines, a batch per call).

    Returns the totals and the files that could not be used, each with why.
    """
    stats = JsonStats()
    unusable: list[tuple[Path, str]] = []
    for path in log_files(paths):
        rows = JsonRows(lookup, path_of_file(path.name), context, selection, stats)
        before = (stats.rows, stats.bad_lines)
        try:
            with open_log(path) as fh:
                batch: list[bytes] = []
                for out in rows.lines(fh):
                    batch.append(out)
                    if len(batch) >= 256:
                        write(b"".join(batch))
                        batch = []
                if batch:
                    write(b"".join(batch))
        except FileNotFoundError:
            unusable.append((path, "no such file or directory"))
            continue
        except IsADirectoryError:
            unusable.append((path, "a folder inside a folder (give it by itself)"))
            continue
        except (OSError, EOFError) as exc:  # EOFError: a gzip cut short
            unusable.append((path, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
            continue
        if stats.rows == before[0] and stats.bad_lines > before[1]:
            unusable.append((path, "not a Zeek log (no #fields header, no JSON objects)"))
    return stats, unusable


def _text(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _address(cell: bytes | None, header: TsvHeader) -> str | None:
    if cell is None or cell in (header.unset_field, header.empty_field):
        return None
    return cell.decode("ascii", "replace")


def tsv_value(cell: bytes, zeek_type: str, header: TsvHeader) -> bytes | None:
    """One TSV cell as Zeek's JSON writer writes that field; None for unset (left out)."""
    if cell == header.unset_field:
        return None
    if zeek_type.startswith(("set[", "vector[", "table[")):
        inner = zeek_type[zeek_type.index("[") + 1:-1]
        if cell == header.empty_field:
            return b"[]"
        items = [_scalar(item, inner, header) for item in cell.split(header.set_separator)]
        return b"[" + b",".join(items) + b"]"
    return _scalar(cell, zeek_type, header)


def _scalar(cell: bytes, zeek_type: str, header: TsvHeader) -> bytes:
    if zeek_type in _INTEGER_TYPES and _INTEGER.fullmatch(cell):
        return cell
    if zeek_type in _REAL_TYPES and _REAL.fullmatch(cell):
        return cell  # as Zeek printed it: 0.000000 stays 0.000000
    if zeek_type == "bool" and cell in (b"T", b"F"):
        return b"true" if cell == b"T" else b"false"
    if cell == header.empty_field and zeek_type == "string":
        return b'""'
    # The ASCII writer doubles a backslash and writes other bytes it escapes as \xHH; the JSON
    # writer keeps \xHH as text too, so only the doubling is undone.
    text = cell.replace(b"\\\\", b"\\").decode("utf-8", "replace")
    return _text(text)


__all__ = ["JsonRows", "JsonStats", "endpoint_fields", "log_files", "logs_to_json",
           "path_of_file", "tsv_value"]
