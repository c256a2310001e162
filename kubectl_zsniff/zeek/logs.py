"""Read Zeek logs (TSV or JSON) and add Kubernetes names for the connection endpoints.

Zeek never sees pod names (it ignores pcapng name records), so names are added afterwards:
`orig_pod`/`resp_pod` (+ namespace, + workload when known) for every log with `id.orig_h` and
`id.resp_h`. Every original byte is kept: new TSV cells are spliced onto the original line and
new JSON keys are spliced before the final `}`, so Zeek's own escaping, number formatting and
field order survive exactly and any Zeek tool still reads the result.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.names.map import (
    DictNameMap,
    LookupFunc,
    NameSource,
    PodName,
    as_lookup,
    normalize_ip,
)
from kubectl_zsniff.zeek.select import RowSelection

LogFormat = Literal["tsv", "json"]

# Zeek writes `.log` (JSON too); rotation/archiving adds `.gz`; the extra two are how a TSV/JSON
# pair of the same log is often kept side by side (as in Zeek's own test baselines).
LOG_SUFFIXES: tuple[str, ...] = (".log", ".log.gz", ".log.json", ".log.tsv")

ORIG_H = "id.orig_h"
RESP_H = "id.resp_h"
NEW_FIELDS_ALL = (
    "orig_pod",
    "resp_pod",
    "orig_namespace",
    "resp_namespace",
    "orig_workload",
    "resp_workload",
)

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Columns:
    """Which name fields to add. Fixed per file so every TSV row matches its `#fields`."""

    namespace: bool = True
    workload: bool = False

    def names(self) -> tuple[str, ...]:
        out = ["orig_pod", "resp_pod"]
        if self.namespace:
            out += ["orig_namespace", "resp_namespace"]
        if self.workload:
            out += ["orig_workload", "resp_workload"]
        return tuple(out)

    def values(self, orig: PodName | None, resp: PodName | None) -> list[str | None]:
        out = [_attr(orig, "name"), _attr(resp, "name")]
        if self.namespace:
            out += [_attr(orig, "namespace"), _attr(resp, "namespace")]
        if self.workload:
            out += [_attr(orig, "workload"), _attr(resp, "workload")]
        return out


def _attr(name: PodName | None, attr: str) -> str | None:
    return None if name is None else getattr(name, attr)


@dataclass
class FileSummary:
    """What happened to one log file."""

    path: Path
    output: Path | None = None  # where the result went; None when nothing was written
    format: LogFormat | None = None
    log_paths: list[str] = field(default_factory=list)  # `#path` values (TSV)
    rows: int = 0
    enriched_rows: int = 0  # rows that carry the new fields
    named_rows: int = 0  # rows with a name on either side
    bad_lines: int = 0  # rows left as they were because they do not parse
    added_fields: tuple[str, ...] = ()
    skipped: str | None = None  # why the file was not enriched
    kept: int = 0  # rows the selection (the volume knob) kept...
    dropped: int = 0  # ...and left out

    @property
    def enriched(self) -> bool:
        return self.skipped is None


# --------------------------------------------------------------------------------------------
# TSV header parsing


def unescape(value: bytes) -> bytes:
    """Decode Zeek's `\\xHH` escapes (header directive values such as `#separator \\x09`)."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value)


@dataclass
class TsvHeader:
    """The directives of one TSV header block, as bytes (Zeek logs need not be UTF-8)."""

    separator: bytes = b"\t"
    set_separator: bytes = b","
    empty_field: bytes = b"(empty)"
    unset_field: bytes = b"-"
    path: str | None = None
    fields: list[str] | None = None
    types: list[str] | None = None

    def apply(self, line: bytes) -> str:
        """Absorb one `#...` line (no line ending); return its directive name."""
        body = line[1:]
        # `#separator` is the one directive written before the separator is known: a space.
        if body.startswith(b"separator "):
            self.separator = unescape(body[len(b"separator ") :].strip()) or b"\t"
            return "separator"
        key, _, rest = body.partition(self.separator)
        name = key.decode("utf-8", "replace").strip()
        if name == "set_separator":
            self.set_separator = rest
        elif name == "empty_field":
            self.empty_field = rest
        elif name == "unset_field":
            self.unset_field = rest
        elif name == "path":
            self.path = rest.decode("utf-8", "replace")
        elif name == "fields":
            self.fields = _split_names(rest, self.separator)
            self.types = None  # a new #fields starts a new block; its #types follows
        elif name == "types":
            self.types = _split_names(rest, self.separator)
        return name


def _split_names(rest: bytes, sep: bytes) -> list[str]:
    return [p.decode("utf-8", "replace") for p in rest.split(sep)] if rest else []


def escape_tsv(value: str | None, header: TsvHeader) -> bytes:
    """One string cell the way Zeek's ASCII writer would write it."""
    if value is None:
        return header.unset_field
    if value == "":
        return header.empty_field
    raw = value.encode("utf-8")
    if raw in (header.unset_field, header.empty_field):
        # A real value that looks like a marker must not read back as unset/empty.
        return b"".join(b"\\x%02x" % c for c in raw)
    out = bytearray()
    for c in raw:
        if c == 0x5C:
            out += b"\\\\"
        elif c < 0x20 or c == 0x7F or bytes([c]) in header.separator:
            out += b"\\x%02x" % c
        else:
            out.append(c)
    return bytes(out)


def _parse_ts(value: object) -> float | None:
    """A Zeek `ts` as epoch seconds: a number, or ISO 8601 when json_timestamps asks for it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Line-level enrichment


def _split_eol(line: bytes) -> tuple[bytes, bytes]:
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""


class _Enricher:
    """Turns the lines of one log into enriched lines, keeping per-file statistics."""

    def __init__(self, lookup: LookupFunc, columns: Columns, summary: FileSummary,
                 selection: RowSelection | None = None) -> None:
        self.lookup = lookup
        self.columns = columns
        self.summary = summary
        self.selection = selection or RowSelection()
        # A JSON log does not say which log it is: its file name does (conn.log -> conn).
        self.file_path = summary.path.name.split(".", 1)[0]
        self.tsv_path: str | None = None
        self.reasons: list[str] = []  # why blocks were left alone
        self.changed = False
        self.workload_seen = False
        self.json_keys: set[str] = set()

    def _name(self, addr: object, ts: float | None) -> PodName | None:
        if not isinstance(addr, str):
            return None
        ip = normalize_ip(addr)
        if ip is None:
            return None
        name = self.lookup(ip, ts)
        if name is not None and name.workload:
            self.workload_seen = True
        return name

    def _selected(self, path: str | None, endpoints: bool, orig: PodName | None,
                  resp: PodName | None) -> bool:
        if self.selection.everything:
            return True
        kept = self.selection.keeps(path, endpoints, orig, resp)
        if kept:
            self.summary.kept += 1
        else:
            self.summary.dropped += 1
        return kept

    def _names(
        self, orig: object, resp: object, ts: float | None
    ) -> tuple[PodName | None, PodName | None]:
        o, r = self._name(orig, ts), self._name(resp, ts)
        self.summary.enriched_rows += 1
        if o is not None or r is not None:
            self.summary.named_rows += 1
        return o, r

    # -- JSON ---------------------------------------------------------------------------------

    def json_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        new_keys = set(NEW_FIELDS_ALL)
        for line in lines:
            body, eol = _split_eol(line)
            if not body.strip() or body.startswith(b"#"):
                yield line
                continue
            self.summary.rows += 1
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            end = body.rfind(b"}")
            if not isinstance(obj, dict) or end < 0 or body[end + 1 :].strip():
                self.summary.bad_lines += 1
                yield line
                continue
            path = obj["_path"] if isinstance(obj.get("_path"), str) else self.file_path
            if ORIG_H not in obj and RESP_H not in obj:
                self._reason(f"no {ORIG_H}/{RESP_H} fields")
                if self._selected(path, False, None, None):
                    yield line
                continue
            if new_keys & obj.keys():
                self._reason("already enriched (has orig_pod)")
                if self._selected(path, True, None, None):
                    yield line
                continue
            orig, resp = self._names(obj.get(ORIG_H), obj.get(RESP_H), _parse_ts(obj.get("ts")))
            if not self._selected(path, True, orig, resp):
                continue
            # Zeek omits unset fields in JSON, so unknown names add no key at all.
            cols = self.columns
            values = zip(cols.names(), cols.values(orig, resp), strict=True)
            pairs = [(k, v) for k, v in values if v is not None]
            self.json_keys.update(k for k, _ in pairs)
            added = [b'"%s":%s' % (k.encode(), json.dumps(v).encode()) for k, v in pairs]
            if not added:
                yield line
                continue
            self.changed = True
            head = body[:end]
            comma = b"" if head.rstrip().endswith(b"{") else b","
            yield head + comma + b",".join(added) + body[end:] + eol

    # -- TSV ----------------------------------------------------------------------------------

    def tsv_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        header = TsvHeader()
        block: _TsvBlock | None = None
        group: list[bytes] = []
        for line in lines:
            if line.startswith(b"#"):
                group.append(line)
                continue
            if group:
                block = self._header_group(group, header, block)
                yield from group
                group = []
            row = self._tsv_row(line, header, block)
            if row is not None:
                yield row
        if group:
            self._header_group(group, header, block)
            yield from group

    def _header_group(
        self, group: list[bytes], header: TsvHeader, block: _TsvBlock | None
    ) -> _TsvBlock | None:
        """Apply a run of `#` lines; rewrite `#fields`/`#types` in place when the block gains
        columns. Buffered as a run so the decision is made with both lines known."""
        fields_at = types_at = -1
        for i, line in enumerate(group):
            name = header.apply(_split_eol(line)[0])
            if name == "fields":
                fields_at, types_at = i, -1
            elif name == "types":
                types_at = i
            elif name == "path" and header.path is not None:
                self.summary.log_paths.append(header.path)
        if fields_at < 0:
            return block  # e.g. `#close` alone: the current block goes on
        block = self._new_block(header)
        if not block.active:
            return block
        sep = header.separator
        names = self.columns.names()
        body, eol = _split_eol(group[fields_at])
        group[fields_at] = body + sep + sep.join(n.encode() for n in names) + eol
        if types_at >= 0 and header.types is not None and len(header.types) == block.width:
            body, eol = _split_eol(group[types_at])
            group[types_at] = body + sep + sep.join(b"string" for _ in names) + eol
        self.summary.added_fields = names
        self.changed = True
        return block

    def _new_block(self, header: TsvHeader) -> _TsvBlock:
        fields = header.fields or []
        block = _TsvBlock(width=len(fields))
        if ORIG_H not in fields or RESP_H not in fields:
            self._reason(f"no {ORIG_H}/{RESP_H} fields")
            return block
        if set(NEW_FIELDS_ALL) & set(fields):
            self._reason("already enriched (has orig_pod)")
            block.orig = fields.index(ORIG_H)  # a flow still, for the selection
            return block
        block.active = True
        block.orig = fields.index(ORIG_H)
        block.resp = fields.index(RESP_H)
        block.ts = fields.index("ts") if "ts" in fields else -1
        return block

    def _tsv_row(
        self, line: bytes, header: TsvHeader, block: _TsvBlock | None
    ) -> bytes | None:
        """The row enriched; None when the selection leaves it out."""
        body, eol = _split_eol(line)
        if not body:
            return line
        self.summary.rows += 1
        if block is None:
            self.summary.bad_lines += 1  # a row before any #fields: nothing describes it
            return line
        if not block.active:
            return line if self._selected(header.path, block.orig >= 0, None, None) else None
        cells = body.split(header.separator)
        if len(cells) != block.width:
            self.summary.bad_lines += 1
            return line
        ts = _parse_ts(cells[block.ts]) if block.ts >= 0 else None
        orig, resp = self._names(
            self._addr(cells[block.orig], header), self._addr(cells[block.resp], header), ts
        )
        if not self._selected(header.path, True, orig, resp):
            return None
        new = self.columns.values(orig, resp)
        sep = header.separator
        return body + sep + sep.join(escape_tsv(v, header) for v in new) + eol

    @staticmethod
    def _addr(cell: bytes, header: TsvHeader) -> str | None:
        if cell in (header.unset_field, header.empty_field):
            return None
        return cell.decode("ascii", "replace")

    def _reason(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)


@dataclass
class _TsvBlock:
    width: int
    active: bool = False
    orig: int = -1
    resp: int = -1
    ts: int = -1


# --------------------------------------------------------------------------------------------
# Format detection and whole-log functions


def _peek_format(lines: Iterator[bytes]) -> tuple[LogFormat | None, list[bytes]]:
    """Read up to the first non-`#` line: `#fields` seen -> TSV, an object first -> JSON."""
    seen: list[bytes] = []
    has_fields = False
    for line in lines:
        seen.append(line)
        if line.startswith(b"#"):
            has_fields = has_fields or line.startswith(b"#fields")
            continue
        if not line.strip():
            continue
        if has_fields:
            return "tsv", seen
        return ("json" if line.lstrip().startswith(b"{") else None), seen
    return ("tsv" if has_fields else None), seen


def detect_format(data: bytes) -> LogFormat | None:
    """`"tsv"`, `"json"` or None (not a Zeek log) for the start of a log."""
    fmt, _ = _peek_format(iter(data.splitlines(keepends=True)))
    return fmt


def _resolve_columns(
    source: NameSource, with_workload: bool | None, namespace: bool
) -> Columns | None:
    """The columns, or None when only the data can tell whether workloads are known."""
    if with_workload is None and isinstance(source, DictNameMap):
        with_workload = source.provides_workload
    return None if with_workload is None else Columns(namespace, with_workload)


def enrich_lines(
    lines: Iterable[bytes],
    namemap: NameSource,
    summary: FileSummary,
    columns: Columns,
    selection: RowSelection | None = None,
) -> Iterator[bytes]:
    """Enrich a stream of log lines (with their line endings); fills `summary` as it goes.
    Rows the `selection` leaves out are not yielded."""
    it = iter(lines)
    fmt, head = _peek_format(it)
    summary.format = fmt
    enricher = _Enricher(as_lookup(namemap), columns, summary, selection)
    all_lines = _chain(head, it)
    if fmt is None:
        summary.skipped = "not a Zeek log (no #fields header, no JSON objects)"
        yield from all_lines
        return
    out = enricher.tsv_lines(all_lines) if fmt == "tsv" else enricher.json_lines(all_lines)
    yield from out
    if fmt == "json":
        summary.added_fields = tuple(k for k in NEW_FIELDS_ALL if k in enricher.json_keys)
    if not enricher.changed and summary.enriched_rows == 0:
        if summary.rows and summary.bad_lines == summary.rows:
            enricher.reasons.append(f"no row parses ({summary.bad_lines} malformed)")
        summary.skipped = "; ".join(enricher.reasons) or "no rows with addresses"


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def enrich_bytes(
    data: bytes,
    namemap: NameSource,
    *,
    with_workload: bool | None = None,
    namespace: bool = True,
) -> tuple[bytes, FileSummary]:
    """Enrich a whole log held in memory; returns the new bytes and what was done."""
    lines = data.splitlines(keepends=True)
    columns = _resolve_columns(namemap, with_workload, namespace)
    if columns is None:
        columns = Columns(namespace, _workloads_known(lines, namemap, namespace))
    summary = FileSummary(Path("-"))
    out = b"".join(enrich_lines(lines, namemap, summary, columns))
    return out, summary


def _workloads_known(lines: Iterable[bytes], namemap: NameSource, namespace: bool) -> bool:
    """Dry run: does any row's name carry a workload? (maps that do not say so themselves)."""
    probe = _Enricher(as_lookup(namemap), Columns(namespace, True), FileSummary(Path("-")))
    it = iter(lines)
    fmt, head = _peek_format(it)
    if fmt is None:
        return False
    all_lines = _chain(head, it)
    for _ in probe.tsv_lines(all_lines) if fmt == "tsv" else probe.json_lines(all_lines):
        pass
    return probe.workload_seen


def open_log(path: Path) -> IO[bytes]:
    """A log for reading, gunzipped when it is gzipped."""
    return _open_log(path)


def _open_log(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def enrich_file(
    path: str | os.PathLike[str],
    namemap: NameSource,
    output: str | os.PathLike[str] | None = None,
    *,
    with_workload: bool | None = None,
    namespace: bool = True,
    selection: RowSelection | None = None,
) -> FileSummary:
    """Enrich one log, in place (atomically, permissions kept) or into `output`.

    A log that gets no new fields is not rewritten in place; with `output` it is copied there
    unchanged so the output holds the whole set. Gzipped logs stay gzipped.
    """
    src = Path(path)
    dst = Path(output) if output is not None else src
    summary = FileSummary(src)
    try:
        columns = _resolve_columns(namemap, with_workload, namespace)
        if columns is None:
            with _open_log(src) as fh:
                columns = Columns(namespace, _workloads_known(fh, namemap, namespace))
        gz = _is_gzip(src)
        # Same directory as the destination so os.replace is an atomic rename.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    except OSError as exc:
        summary.skipped = f"cannot read or prepare: {exc}"
        return summary
    tmp = Path(tmp_name)
    try:
        _write_log(src, fd, gz,
                   lambda lines: enrich_lines(lines, namemap, summary, columns, selection))
        _put_in_place(src, dst, tmp, summary)
        return summary
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ZsniffError(
            f"cannot write the enriched Zeek log {dst}: {exc.strerror or exc}",
            hint="check free space and permissions of the log directory",
            status=ExitStatus.OUTPUT_ERROR,
        ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_log(src: Path, fd: int, gz: bool,
               rewrite: Callable[[IO[bytes]], Iterable[bytes]]) -> None:
    """`rewrite` of the log `src` into the open file `fd`, gzipped like the source."""
    with contextlib.ExitStack() as stack:
        lines = stack.enter_context(_open_log(src))
        raw = stack.enter_context(os.fdopen(fd, "wb"))
        write: Callable[[bytes], object] = raw.write
        if gz:
            write = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb")).write
        for chunk in rewrite(lines):
            write(chunk)


def _put_in_place(src: Path, dst: Path, tmp: Path, summary: FileSummary) -> None:
    """The enriched `tmp` becomes `dst` (atomically, `src`'s mode and owner kept). A log that
    got no new fields is not rewritten: `tmp` goes, and `dst` elsewhere is a plain copy."""
    if summary.skipped is not None and not summary.dropped:
        tmp.unlink()
        if dst != src and summary.format is not None:
            shutil.copyfile(src, dst)
            shutil.copymode(src, dst)
            summary.output = dst
        return
    shutil.copymode(src, tmp)
    _keep_owner(src, tmp)
    os.replace(tmp, dst)
    summary.output = dst


def _keep_owner(src: Path, dst: Path) -> None:
    """Only root can give a file away; keeping the owner matters when run under sudo."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = src.stat()
        with contextlib.suppress(OSError):
            os.chown(dst, st.st_uid, st.st_gid)


def is_log_name(name: str, suffixes: Sequence[str] = LOG_SUFFIXES) -> bool:
    return not name.startswith(".") and any(name.endswith(s) for s in suffixes)


def enrich_directory(
    directory: str | os.PathLike[str],
    namemap: NameSource,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    suffix: str | Sequence[str] = LOG_SUFFIXES,
    with_workload: bool | None = None,
    namespace: bool = True,
    selection: RowSelection | None = None,
) -> list[FileSummary]:
    """Enrich every log directly in `directory` whose name ends with `suffix` (one or several).

    In place unless `output_dir` is given. Other files (zeek.stderr, state files) are ignored.
    The workload columns are decided once for the whole directory so all logs share a schema.
    """
    src_dir = Path(directory)
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    names = sorted(p for p in src_dir.iterdir() if p.is_file() and is_log_name(p.name, suffixes))
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if _resolve_columns(namemap, with_workload, namespace) is None:
        with_workload = any(_file_has_workloads(p, namemap, namespace) for p in names)
    return [
        enrich_file(
            p,
            namemap,
            None if out_dir is None else out_dir / p.name,
            with_workload=with_workload,
            namespace=namespace,
            selection=selection,
        )
        for p in names
        if selection is None or selection.wants_log(p.name.split(".", 1)[0])
    ]


def _file_has_workloads(path: Path, namemap: NameSource, namespace: bool) -> bool:
    try:
        with _open_log(path) as fh:
            return _workloads_known(fh, namemap, namespace)
    except OSError:
        return False


def enrich_paths(
    paths: Iterable[str | os.PathLike[str]],
    namemap: NameSource,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    with_workload: bool | None = None,
    namespace: bool = True,
    selection: RowSelection | None = None,
) -> list[FileSummary]:
    """The offline `enrich` command: files and directories of logs made elsewhere.

    Directories are enriched as by `enrich_directory`; a file named explicitly is tried
    whatever its name. Without `output_dir` everything is rewritten in place.
    """
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: list[FileSummary] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            sub = None if out_dir is None else out_dir / p.name
            results += enrich_directory(
                p, namemap, output_dir=sub, with_workload=with_workload, namespace=namespace,
                selection=selection,
            )
        elif p.is_file() and selection is not None and not selection.wants_log(
            p.name.split(".", 1)[0]
        ):
            continue  # a log the selection does not want is left as it is, not emptied
        elif p.is_file():
            dst = None if out_dir is None else out_dir / p.name
            results.append(
                enrich_file(p, namemap, dst, with_workload=with_workload, namespace=namespace,
                            selection=selection)
            )
        else:
            results.append(FileSummary(p, skipped="no such file or directory"))
    return results


# --------------------------------------------------------------------------------------------
# Reading


def read_tsv(
    path: str | os.PathLike[str],
) -> Iterator[tuple[TsvHeader, list[bytes]]]:
    """The rows of a TSV log as raw cells, each with the header block that describes it."""
    header = TsvHeader()
    snapshot = replace(header)
    with _open_log(Path(path)) as fh:
        for line in fh:
            body, _ = _split_eol(line)
            if body.startswith(b"#"):
                header.apply(body)
                snapshot = replace(header)  # rows keep the block they were written under
            elif body:
                yield snapshot, body.split(header.separator)
