"""The API server: aiohttp app speaking enough of the Kubernetes REST API for kubectl.

Everything is plain HTTP on 127.0.0.1 with bearer tokens read from the kubeconfig that ``up``
wrote.  The test-only control API lives under ``/zsniff-test/`` (admin token required).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import fcntl
import ipaddress
import json
import logging
import os
import random
import re
import signal
import ssl
import string
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from . import admission, patch, runtime
from .kubelet import Kubelet, now
from .store import Obj, Store, TooOld, match_fields, match_labels

log = logging.getLogger("apiserver")

VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-zsniff",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc",
    "platform": "linux/amd64",
}
KINDS = {"pods": "Pod", "services": "Service", "nodes": "Node", "namespaces": "Namespace",
         "events": "Event"}
CLUSTER_SCOPED = {"nodes", "namespaces"}
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
# Exec output goes out in messages of at most 4 KiB, as a real kube-apiserver sends it: 200 MB
# of `cat` through Kubernetes v1.34.4 + containerd 1.6 came as 35,766 messages, median 4096
# bytes, mean 5.6 kB, 4% of them 32 KiB. (It used to be 256 KiB here, which made a client's
# cost per message look 16x smaller than it is against a real cluster.)
CHUNK = 4096
F_SETPIPE_SZ = 1031


def api_resources(ephemeral: bool) -> list[dict[str, Any]]:
    def r(name: str, kind: str, verbs: list[str], namespaced: bool = True,
          short: list[str] | None = None, singular: str = "") -> dict[str, Any]:
        d: dict[str, Any] = {"name": name, "singularName": singular, "namespaced": namespaced,
                             "kind": kind, "verbs": verbs}
        if short:
            d["shortNames"] = short
        if singular and name in ("pods", "services"):
            d["categories"] = ["all"]
        return d

    out = [
        r("events", "Event", ALL_VERBS, short=["ev"], singular="event"),
        r("namespaces", "Namespace", ["create", "delete", "get", "list", "patch", "update",
                                      "watch"], False, ["ns"], "namespace"),
        r("nodes", "Node", ALL_VERBS, False, ["no"], "node"),
        r("pods", "Pod", ALL_VERBS, short=["po"], singular="pod"),
        r("pods/attach", "PodAttachOptions", ["create", "get"]),
        r("pods/exec", "PodExecOptions", ["create", "get"]),
        r("pods/log", "Pod", ["get"]),
        r("pods/status", "Pod", ["get", "patch", "update"]),
        r("services", "Service", ALL_VERBS, short=["svc"], singular="service"),
    ]
    if ephemeral:
        out.insert(4, r("pods/ephemeralcontainers", "Pod", ["get", "patch", "update"]))
    return out


def status_body(code: int, reason: str, message: str,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.code, headers=self.headers)


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    {"name": name, "kind": resource})


def invalid(kind: str, name: str, field: str, detail: str, cause_reason: str) -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {field}: {detail}',
                    {"name": name, "kind": kind,
                     "causes": [{"reason": cause_reason, "message": detail, "field": field}]})


@dataclass
class Faults:
    exec_drop_after: int | None = None
    exec_drop_count: int = 0
    exec_drop_match: str = ""  # a substring of the exec request's path+query ("" = any)
    api_fail_code: int = 0
    api_fail_count: int = 0
    api_fail_retry_after: int = 1
    api_fail_match: str = ""
    api_delay: float = 0.0
    api_delay_count: int = 0
    api_delay_match: str = ""


def human_age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    s = max(0, int((dt.datetime.now(dt.timezone.utc) - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m" if s < 28800 else f"{s // 3600}h"
    return f"{s // 86400}d"


def _col(name: str, typ: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": name, "priority": priority}


def pod_status_text(p: Obj) -> str:
    if p["metadata"].get("deletionTimestamp"):
        return "Terminating"
    st = p.get("status", {})
    reason = st.get("phase", "Pending")
    for cs in st.get("containerStatuses", []):
        state = cs.get("state", {})
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state and reason != "Running":
            reason = state["terminated"].get("reason") or reason
    return reason


def table_for(resource: str, objs: list[Obj], rv: str, include: str) -> Obj:
    if resource == "pods":
        cols = [_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts"),
                _col("Age"), _col("IP", priority=1), _col("Node", priority=1),
                _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)]
    elif resource == "nodes":
        cols = [_col("Name", fmt="name"), _col("Status"), _col("Roles"), _col("Age"),
                _col("Version"), _col("Internal-IP", priority=1),
                _col("External-IP", priority=1), _col("OS-Image", priority=1),
                _col("Kernel-Version", priority=1), _col("Container-Runtime", priority=1)]
    elif resource == "services":
        cols = [_col("Name", fmt="name"), _col("Type"), _col("Cluster-IP"),
                _col("External-IP"), _col("Port(s)"), _col("Age"), _col("Selector", priority=1)]
    else:
        cols = [_col("Name", fmt="name"), _col("Status"), _col("Age")]
    rows = []
    for o in objs:
        m, st, sp = o["metadata"], o.get("status", {}), o.get("spec", {})
        age = human_age(m.get("creationTimestamp"))
        if resource == "pods":
            cs = st.get("containerStatuses", [])
            ready = sum(1 for c in cs if c.get("ready"))
            cells: list[Any] = [m["name"], f"{ready}/{len(sp.get('containers', []))}",
                                pod_status_text(o), sum(c.get("restartCount", 0) for c in cs),
                                age, st.get("podIP") or "<none>",
                                sp.get("nodeName") or "<none>", "<none>", "<none>"]
        elif resource == "nodes":
            ip = next((a["address"] for a in st.get("addresses", [])
                       if a["type"] == "InternalIP"), "<none>")
            ni = st.get("nodeInfo", {})
            cells = [m["name"], "Ready", "<none>", age, ni.get("kubeletVersion", ""), ip,
                     "<none>", ni.get("osImage", ""), ni.get("kernelVersion", ""),
                     ni.get("containerRuntimeVersion", "")]
        elif resource == "services":
            ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}"
                             for p in sp.get("ports", [])) or "<none>"
            sel = ",".join(f"{k}={v}" for k, v in (sp.get("selector") or {}).items())
            cells = [m["name"], sp.get("type", "ClusterIP"), sp.get("clusterIP", "<none>"),
                     "<none>", ports, age, sel or "<none>"]
        else:
            cells = [m["name"], st.get("phase", "Active"), age]
        if include == "None":
            row_obj: Any = None
        elif include == "Object":
            row_obj = o
        else:
            row_obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": m}
        row: dict[str, Any] = {"cells": cells}
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": cols, "rows": rows}


class Api:
    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.store = Store()
        self.prefix = runtime.prefix_for(state_dir)
        self.net = runtime.Network(self.prefix)
        log_dir = state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.kubelet = Kubelet(self.store, self.net, log_dir)
        self.faults = Faults()
        self.ephemeral_supported = True
        # False: the exec websocket offers only v4.channel.k8s.io, as before Kubernetes 1.29.
        self.exec_v5 = True
        self.tokens = self._read_tokens()
        self._svc_next = 10

    def _read_tokens(self) -> dict[str, str]:
        cfg = json.loads((self.state_dir / "kubeconfig").read_text())
        return {u["user"]["token"]: u["name"] for u in cfg["users"] if "token" in u["user"]}

    # ---- bootstrap ----------------------------------------------------------------------

    def bootstrap(self) -> None:
        runtime.cleanup_prefix(self.prefix)
        self.net.setup()
        for ns, level in (("default", None), ("kube-system", None), ("kube-public", None),
                          ("baseline", "baseline"), ("restricted", "restricted")):
            labels = {"kubernetes.io/metadata.name": ns}
            if level:
                labels[admission.LEVEL_LABEL] = level
            self.store.put("namespaces", {
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": self._new_meta(ns, None, labels),
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        kernel = os.uname().release
        for node, (v4, v6) in runtime.NODE_ADDRS.items():
            self.store.put("nodes", {
                "kind": "Node", "apiVersion": "v1",
                "metadata": self._new_meta(node, None, {
                    "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}),
                "spec": {"podCIDR": "10.244.0.0/16",
                         "podCIDRs": ["10.244.0.0/16", "fd00:10:244::/64"]},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": v4},
                                  {"type": "InternalIP", "address": v6},
                                  {"type": "Hostname", "address": node}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "message": "kubelet is posting ready status",
                                    "lastHeartbeatTime": now(),
                                    "lastTransitionTime": now()}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0-zsniff", "osImage": "zsniff netns",
                                 "kernelVersion": kernel, "operatingSystem": "linux",
                                 "architecture": "amd64",
                                 "containerRuntimeVersion": "containerd://1.7.24",
                                 "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                                 "bootID": "", "osImage_": ""},
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                    "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                }})

    def _new_meta(self, name: str, namespace: str | None,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": now()}
        if namespace:
            m["namespace"] = namespace
        if labels:
            m["labels"] = labels
        return m

    # ---- middleware ---------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.monotonic()
        status = "?"
        try:
            resp = await self._guarded(request, handler)
            status = str(resp.status)
            return resp
        except ApiError as e:
            status = str(e.code)
            return e.response()
        finally:
            log.info("%s %s %s accept=%s ua=%s %.3fs", request.method, request.path_qs, status,
                     request.headers.get("Accept", ""),
                     request.headers.get("User-Agent", "")[:40], time.monotonic() - t0)

    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # As the real authenticators: a client certificate the CA signed names its user (CN);
        # else a bearer token, the scheme in any case (apiserver bearertoken.go), so the
        # official client's in-cluster "bearer <token>" is accepted like kubectl's "Bearer".
        user = _certificate_user(request)
        if user is None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        request["user"] = user
        if request.path.startswith("/zsniff-test/"):
            if user != "admin":
                raise ApiError(403, "Forbidden", "control API needs the admin user")
            return await handler(request)
        f = self.faults
        if f.api_delay_count > 0 and f.api_delay_match in request.path_qs:
            f.api_delay_count -= 1
            await asyncio.sleep(f.api_delay)
        if f.api_fail_count > 0 and f.api_fail_match in request.path_qs:
            f.api_fail_count -= 1
            code = f.api_fail_code
            if code == 429:
                raise ApiError(429, "TooManyRequests",
                               "Too many requests, please try again later.",
                               {"retryAfterSeconds": f.api_fail_retry_after},
                               {"Retry-After": str(f.api_fail_retry_after)})
            if code == 503:
                raise ApiError(503, "ServiceUnavailable",
                               "the server is currently unable to handle the request",
                               {"retryAfterSeconds": f.api_fail_retry_after},
                               {"Retry-After": str(f.api_fail_retry_after)})
            raise ApiError(code, "InternalError",
                           "Internal error occurred: injected fault", {"causes": [
                               {"message": "injected fault"}]})
        return await handler(request)

    # ---- discovery ----------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(VERSION)

    async def api(self, request: web.Request) -> web.Response:
        return web.json_response({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": f"127.0.0.1:{self.port}"}]})

    async def apis(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1",
                                  "resources": api_resources(self.ephemeral_supported)})

    async def openapi_v3(self, request: web.Request) -> web.Response:
        return web.json_response({"paths": {
            "api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={OPENAPI_HASH}"},
            "api": {"serverRelativeURL": f"/openapi/v3/api?hash={OPENAPI_HASH}"}}})

    async def openapi_v3_gv(self, request: web.Request) -> web.Response:
        if request.match_info["gv"] == "api/v1":
            return web.json_response(openapi_core_v1())
        if request.match_info["gv"] == "api":
            return web.json_response({"openapi": "3.0.0", "info": {"title": "Kubernetes",
                                      "version": VERSION["gitVersion"]}, "paths": {}})
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    async def not_found_plain(self, request: web.Request) -> web.Response:
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    # ---- generic REST -------------------------------------------------------------------

    async def rest(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        ns: str | None = None
        if len(parts) >= 3 and parts[0] == "namespaces":
            ns, resource, rest = parts[1], parts[2], parts[3:]
        else:
            resource, rest = parts[0], parts[1:]
        if resource not in KINDS or len(rest) > 2:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        name = rest[0] if rest else None
        sub = rest[1] if len(rest) > 1 else None
        if resource in CLUSTER_SCOPED and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        m = request.method
        q = request.query
        if name is None:
            verb = {"GET": "watch" if q.get("watch") in ("true", "1") else "list",
                    "POST": "create", "DELETE": "deletecollection"}.get(m, "")
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
                    "POST": "create"}.get(m, "")
        if sub in ("exec", "attach", "portforward"):
            verb = "create"
        full = f"{resource}/{sub}" if sub else resource
        if sub == "ephemeralcontainers" and not self.ephemeral_supported:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        if not verb:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on "
                           "the requested resource", {})
        if not admission.allowed(request["user"], verb, full):
            raise ApiError(403, "Forbidden", admission.forbidden_message(
                request["user"], verb, full, ns, name), {"name": name or "", "kind": resource})
        if ns is not None and resource != "namespaces" and m == "POST" and name is None and \
                self.store.get("namespaces", "", ns) is None:
            raise not_found("namespaces", ns)
        if name is None:
            if m == "GET":
                return await self.list_or_watch(request, resource, ns)
            if m == "POST":
                return await self.create(request, resource, ns or "")
            raise ApiError(405, "MethodNotAllowed", "not supported", {})
        key_ns = "" if resource in CLUSTER_SCOPED else (ns or "")
        if sub is None:
            if m == "GET":
                return self._get_or_404(request, resource, key_ns, name)
            if m in ("PATCH", "PUT"):
                return await self.modify(request, resource, key_ns, name, sub=None)
            if m == "DELETE":
                return await self.delete(request, resource, key_ns, name)
        if resource == "pods":
            if sub == "ephemeralcontainers":
                if m == "GET":
                    return self._get_or_404(request, resource, key_ns, name)
                if m in ("PATCH", "PUT"):
                    return await self.modify(request, resource, key_ns, name, sub=sub)
            if sub == "status" and m == "GET":
                return self._get_or_404(request, resource, key_ns, name)
            if sub == "exec":
                return await self.exec(request, key_ns, name)
            if sub == "log":
                return self.pod_log(request, key_ns, name)
            if sub == "attach":
                raise ApiError(400, "BadRequest",
                               "attach is not modelled by the zsniff test cluster", {})
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    def _get(self, resource: str, ns: str, name: str) -> Obj:
        obj = self.store.get(resource, ns, name)
        if obj is None:
            raise not_found(resource, name)
        return obj

    def _get_or_404(self, request: web.Request, resource: str, ns: str,
                    name: str) -> web.Response:
        obj = self._get(resource, ns, name)
        return self._respond(request, resource, obj)

    def _respond(self, request: web.Request, resource: str, obj: Obj,
                 status: int = 200) -> web.Response:
        if "as=Table" in request.headers.get("Accept", ""):
            tbl = table_for(resource, [obj], obj["metadata"]["resourceVersion"],
                            request.query.get("includeObject", "Metadata"))
            return web.json_response(tbl, status=status)
        return web.json_response(obj, status=status)

    async def list_or_watch(self, request: web.Request, resource: str,
                            ns: str | None) -> web.StreamResponse:
        q = request.query
        lsel, fsel = q.get("labelSelector"), q.get("fieldSelector")
        if q.get("watch") in ("true", "1"):
            return await self.watch(request, resource, ns)
        items = [o for o in self.store.list(resource, ns)
                 if match_labels(o["metadata"].get("labels") or {}, lsel)
                 and match_fields(o, fsel)]
        rv = str(self.store.rv)
        if "as=Table" in request.headers.get("Accept", ""):
            return web.json_response(table_for(resource, items, rv,
                                               q.get("includeObject", "Metadata")))
        return web.json_response({"kind": f"{KINDS[resource]}List", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": rv}, "items": items})

    async def watch(self, request: web.Request, resource: str,
                    ns: str | None) -> web.StreamResponse:
        q = request.query
        lsel, fsel = q.get("labelSelector"), q.get("fieldSelector")
        as_table = "as=Table" in request.headers.get("Accept", "")
        include = q.get("includeObject", "Metadata")
        rv_s = q.get("resourceVersion", "")
        since = int(rv_s) if rv_s.isdigit() and rv_s != "0" else None
        try:
            w = self.store.watch(resource, ns, since)
        except TooOld as e:
            raise ApiError(410, "Expired", str(e), {}) from e
        timeout = float(q.get("timeoutSeconds", "0") or 0) or None
        bookmarks = q.get("allowWatchBookmarks") == "true" and not as_table
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        def matches(o: Obj | None) -> bool:
            return o is not None and match_labels(o["metadata"].get("labels") or {}, lsel) \
                and match_fields(o, fsel)

        async def send(typ: str, obj: Obj) -> None:
            if as_table:
                obj = table_for(resource, [obj], obj["metadata"]["resourceVersion"], include)
            await resp.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

        try:
            if since is None:
                for o in self.store.list(resource, ns):
                    if matches(o):
                        await send("ADDED", o)
            deadline = time.monotonic() + timeout if timeout else None
            last_bm = time.monotonic()
            while True:
                if deadline and time.monotonic() >= deadline:
                    break
                if request.transport is None or request.transport.is_closing():
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if bookmarks and time.monotonic() - last_bm > 1.0:
                        last_bm = time.monotonic()
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": {
                            "kind": KINDS[resource], "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self.store.rv)}}}).encode()
                            + b"\n")
                    continue
                new_ok, old_ok = matches(ev.obj), matches(ev.old)
                if ev.type == "ADDED" and new_ok:
                    await send("ADDED", ev.obj)
                elif ev.type == "MODIFIED":
                    if new_ok and old_ok:
                        await send("MODIFIED", ev.obj)
                    elif new_ok:
                        await send("ADDED", ev.obj)
                    elif old_ok:
                        await send("DELETED", ev.obj)
                elif ev.type == "DELETED" and (new_ok or old_ok):
                    await send("DELETED", ev.obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(w)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    # ---- create / modify / delete -------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the body of the request was in an unknown "
                           f"format - accepted media types include: application/json: {e}",
                           {}) from e

    async def create(self, request: web.Request, resource: str, ns: str) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected an object", {})
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                random.choices(string.ascii_lowercase + string.digits, k=5))
        name = meta.get("name", "")
        kind = KINDS[resource]
        if not name:
            raise invalid(kind, "", "metadata.name", "Required value: name or generateName "
                          "is required", "FieldValueRequired")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
            raise invalid(kind, name, "metadata.name",
                          f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                          "consist of lower case alphanumeric characters, '-' or '.'",
                          "FieldValueInvalid")
        key_ns = "" if resource in CLUSTER_SCOPED else ns
        if self.store.get(resource, key_ns, name) is not None:
            raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                           {"name": name, "kind": resource})
        meta.update({"uid": str(uuid.uuid4()), "creationTimestamp": now()})
        meta.pop("resourceVersion", None)
        if key_ns:
            meta["namespace"] = key_ns
        body["kind"], body["apiVersion"] = kind, "v1"
        dry = request.query.get("dryRun") == "All"
        if resource == "pods":
            self._default_pod(body)
            self._validate_pod(body)
            self._admit_pod(ns, body)
            self.kubelet.schedule(body)
        elif resource == "services":
            self._default_service(body)
        elif resource == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            body["spec"] = {"finalizers": ["kubernetes"]}
            body["status"] = {"phase": "Active"}
        if dry:
            return web.json_response(body, status=201)
        stored = self.store.put(resource, body)
        if resource == "pods":
            self.kubelet.start(stored)
        return web.json_response(stored, status=201)

    @staticmethod
    def _default_pod(pod: Obj) -> None:
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("securityContext", {})
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
        for c in spec.get("containers") or []:
            Api._default_container(c)

    @staticmethod
    def _default_container(c: dict[str, Any]) -> None:
        c.setdefault("resources", {})
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        img = c.get("image", "")
        tagged = ":" in img.split("/")[-1] and not img.endswith(":latest")
        c.setdefault("imagePullPolicy", "IfNotPresent" if tagged or "@" in img else "Always")

    def _validate_pod(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        cs = spec.get("containers") or []
        if not cs:
            raise invalid("Pod", name, "spec.containers", "Required value", "FieldValueRequired")
        seen: set[str] = set()
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for i, c in enumerate(spec.get(key) or []):
                cname = c.get("name", "")
                if not cname:
                    raise invalid("Pod", name, f"spec.{key}[{i}].name", "Required value",
                                  "FieldValueRequired")
                if not c.get("image"):
                    raise invalid("Pod", name, f"spec.{key}[{i}].image", "Required value",
                                  "FieldValueRequired")
                if cname in seen:
                    raise invalid("Pod", name, f"spec.{key}[{i}].name",
                                  f'Duplicate value: "{cname}"', "FieldValueDuplicate")
                seen.add(cname)

    def _admit_pod(self, ns: str, pod: Obj) -> None:
        nsobj = self.store.get("namespaces", "", ns) or {"metadata": {}}
        level = (nsobj["metadata"].get("labels") or {}).get(admission.LEVEL_LABEL)
        msg = admission.pod_security_violation(level, pod["spec"])
        if msg:
            name = pod["metadata"]["name"]
            raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {msg}',
                           {"name": name, "kind": "pods"})

    def _default_service(self, svc: Obj) -> None:
        spec = svc.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if not spec.get("clusterIP"):
            # Allocated from the service CIDR; nothing routes it (no kube-proxy is modelled).
            ip = str(SERVICE_CIDR.network_address + self._svc_next)
            self._svc_next += 1
            spec["clusterIP"] = ip
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        svc.setdefault("status", {"loadBalancer": {}})

    def _apply_patch(self, request: web.Request, cur: Obj, body: Any) -> Obj:
        ctype = request.content_type
        if request.method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "expected an object", {})
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != cur["metadata"]["resourceVersion"]:
                kind = cur["kind"].lower() + "s"
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind} '
                               f'"{cur["metadata"]["name"]}": the object has been modified; '
                               "please apply your changes to the latest version and try again",
                               {"name": cur["metadata"]["name"], "kind": kind})
            return copy.deepcopy(body)
        if ctype == "application/strategic-merge-patch+json":
            return patch.strategic_merge(cur, body)
        if ctype == "application/merge-patch+json":
            return patch.json_merge(cur, body)
        if ctype == "application/json-patch+json":
            return json_patch(cur, body)
        raise ApiError(415, "UnsupportedMediaType",
                       'the body of the request was in an unknown format - accepted media types '
                       'include: application/json-patch+json, application/merge-patch+json, '
                       'application/strategic-merge-patch+json', {})

    async def modify(self, request: web.Request, resource: str, ns: str, name: str,
                     sub: str | None) -> web.Response:
        cur = self._get(resource, ns, name)
        body = await self._body(request)
        new = self._apply_patch(request, cur, body)
        new.setdefault("metadata", {})
        # Identity and system fields are the server's, whatever the patch says.
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds"):
            if k in cur["metadata"]:
                new["metadata"][k] = cur["metadata"][k]
        new["kind"], new["apiVersion"] = cur["kind"], "v1"
        if resource == "pods":
            if sub == "ephemeralcontainers":
                return self._update_ephemeral(request, cur, new)
            new["status"] = cur["status"]
            self._check_pod_update(cur, new)
        elif resource == "services":
            new["spec"]["clusterIP"] = cur["spec"].get("clusterIP")
            self._default_service(new)
            new["status"] = cur.get("status", {})
        else:
            new["status"] = cur.get("status", {})
        if request.query.get("dryRun") == "All":
            return self._respond(request, resource, new)
        stored = self.store.put(resource, new)
        return self._respond(request, resource, stored)

    def _check_pod_update(self, cur: Obj, new: Obj) -> None:
        a, b = copy.deepcopy(cur["spec"]), copy.deepcopy(new.get("spec") or {})
        for c in b.get("containers") or []:
            self._default_container(c)
        # Only images (and a few scheduling fields) of a pod may change after creation.
        for spec in (a, b):
            for c in spec.get("containers") or []:
                c.pop("image", None)
            for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                spec.pop(k, None)
        for k, v in a.items():
            b.setdefault(k, v) if k in ("nodeName",) else None
        if a != b:
            raise invalid("Pod", cur["metadata"]["name"], "spec",
                          "Forbidden: pod updates may not change fields other than "
                          "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                          "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
                          "existing tolerations),`spec.terminationGracePeriodSeconds` "
                          "(allow it to be set to 1 if it was previously negative)",
                          "FieldValueForbidden")
        new["spec"] = {**cur["spec"], **(new.get("spec") or {})}

    def _update_ephemeral(self, request: web.Request, cur: Obj, new: Obj) -> web.Response:
        name = cur["metadata"]["name"]
        old_list = cur["spec"].get("ephemeralContainers") or []
        new_list = (new.get("spec") or {}).get("ephemeralContainers") or []
        for c in new_list:
            c.setdefault("resources", {})
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            img = c.get("image", "")
            tagged = ":" in img.split("/")[-1] and not img.endswith(":latest")
            c.setdefault("imagePullPolicy", "IfNotPresent" if tagged else "Always")
        by_name = {c.get("name"): (i, c) for i, c in enumerate(new_list)}
        removed = [c["name"] for c in old_list if c["name"] not in by_name]
        if removed:
            raise invalid("Pod", name, "spec.ephemeralContainers",
                          f"Forbidden: existing ephemeral containers {json.dumps(removed[0])} "
                          "may not be removed", "FieldValueForbidden")
        for c in old_list:
            i, nc = by_name[c["name"]]
            if nc != c:
                raise invalid("Pod", name, f"spec.ephemeralContainers[{i}]",
                              f"Forbidden: existing ephemeral containers {json.dumps(c['name'])} "
                              "may not be changed", "FieldValueForbidden")
        candidate = copy.deepcopy(cur)
        candidate["spec"]["ephemeralContainers"] = new_list
        self._validate_pod(candidate)
        for i, c in enumerate(new_list):
            for bad in ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
                if c.get(bad):
                    raise invalid("Pod", name, f"spec.ephemeralContainers[{i}].{bad}",
                                  "Forbidden: cannot be set for an Ephemeral Container",
                                  "FieldValueForbidden")
        self._admit_pod(cur["metadata"]["namespace"], candidate)
        if request.query.get("dryRun") == "All" or new_list == old_list:
            return web.json_response(candidate)
        stored = self.store.put("pods", candidate)
        old_names = {c["name"] for c in old_list}
        for c in new_list:
            if c["name"] not in old_names:
                self.kubelet.start_ephemeral(cur["metadata"]["namespace"], name, c)
        return web.json_response(stored)

    async def delete(self, request: web.Request, resource: str, ns: str,
                     name: str) -> web.Response:
        cur = self._get(resource, ns, name)
        if resource != "pods":
            if resource == "namespaces":
                for p in self.store.list("pods", name):
                    await self.kubelet.delete(name, p["metadata"]["name"], 0)
                for s in self.store.list("services", name):
                    self.store.delete("services", name, s["metadata"]["name"])
            gone = self.store.delete(resource, ns, name)
            return web.json_response(gone or cur)
        raw = await request.read()
        opts = json.loads(raw) if raw.strip() else {}
        grace_s = request.query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        grace = int(grace_s) if grace_s is not None else int(
            cur["spec"].get("terminationGracePeriodSeconds", 30))
        if cur["metadata"].get("deletionTimestamp"):
            return web.json_response(cur)

        def mark(p: Obj) -> None:
            p["metadata"]["deletionTimestamp"] = now()
            p["metadata"]["deletionGracePeriodSeconds"] = grace

        marked = self.store.update("pods", ns, name, mark) or cur
        # Processes get SIGTERM and, after the grace period (capped at 5 s to keep tests fast),
        # SIGKILL; the object disappears once they are gone.
        asyncio.get_running_loop().create_task(self.kubelet.delete(ns, name, min(grace, 5)))
        return web.json_response(marked)

    # ---- logs ---------------------------------------------------------------------------

    def pod_log(self, request: web.Request, ns: str, name: str) -> web.Response:
        pod = self._get("pods", ns, name)
        names = [c["name"] for c in pod["spec"]["containers"]] + [
            c["name"] for c in pod["spec"].get("ephemeralContainers") or []]
        cname = request.query.get("container") or names[0]
        if cname not in names:
            raise ApiError(400, "BadRequest",
                           f"container {cname} is not valid for pod {name}", {})
        f = self.kubelet.log_dir / f"{ns}_{name}_{cname}.log"
        data = f.read_bytes() if f.exists() else b""
        return web.Response(body=data, content_type="text/plain")

    # ---- exec ---------------------------------------------------------------------------

    async def exec(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        pod = self._get("pods", ns, name)
        q = request.query
        argv = q.getall("command", [])
        spec = pod["spec"]
        containers = {c["name"]: c for c in spec["containers"]}
        ephem = {c["name"]: c for c in spec.get("ephemeralContainers") or []}
        cname = q.get("container", "")
        if not cname:
            if len(containers) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod "
                               f"{name}, choose one of: [{' '.join(containers)}]", {})
            cname = next(iter(containers))
        container = containers.get(cname) or ephem.get(cname)
        if container is None:
            raise ApiError(400, "BadRequest", f"container {cname} is not valid for pod {name}",
                           {})
        phase = pod["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            raise ApiError(400, "BadRequest", "cannot exec into a container in a completed pod; "
                           f"current phase is {phase}", {})
        statuses = pod["status"].get("containerStatuses", []) + pod["status"].get(
            "ephemeralContainerStatuses", [])
        st = next((s for s in statuses if s["name"] == cname), None)
        pr = self.kubelet.pods.get((ns, name))
        if st is None or "running" not in st["state"] or pr is None or pr.netns is None:
            raise ApiError(400, "BadRequest",
                           f'unable to upgrade connection: container not found ("{cname}")', {})
        if not argv:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command", {})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # SPDY (kubectl <= 1.29 default, or the fallback of newer ones) is not modelled.
            raise ApiError(400, "BadRequest", "Upgrade request required (the zsniff test cluster "
                           "speaks only the websocket v5/v4.channel.k8s.io protocols)", {})
        protocols = ("v5.channel.k8s.io", "v4.channel.k8s.io") if self.exec_v5 else (
            "v4.channel.k8s.io",)
        ws = web.WebSocketResponse(protocols=protocols,
                                   compress=False, max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "BadRequest", "unsupported exec subprotocol; offer "
                           "v5.channel.k8s.io or v4.channel.k8s.io", {})
        await ws.prepare(request)
        session = ExecSession(self, request, ws, pr, pod, container, argv,
                              stdin=q.get("stdin") in ("true", "1"),
                              stdout=q.get("stdout") in ("true", "1"),
                              stderr=q.get("stderr") in ("true", "1"))
        await session.run()
        return ws

    # ---- control API --------------------------------------------------------------------

    async def ctl_get(self, request: web.Request) -> web.Response:
        return web.json_response({
            "prefix": self.prefix, "node_netns": self.net.node_ns,
            "ephemeral_supported": self.ephemeral_supported, "exec_v5": self.exec_v5,
            "pull_delay": self.kubelet.pull_delay, "runtime": self.kubelet.runtime_name,
            "default_caps": list(self.kubelet.default_caps), "faults": self.faults.__dict__})

    async def ctl_settings(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "ephemeral_supported" in body:
            self.ephemeral_supported = bool(body["ephemeral_supported"])
        if "exec_v5" in body:
            self.exec_v5 = bool(body["exec_v5"])
        if "pull_delay" in body:
            self.kubelet.pull_delay = float(body["pull_delay"])
        if "runtime" in body:
            rt = body["runtime"]
            if rt not in runtime.RUNTIME_CAPS:
                raise ApiError(400, "BadRequest", f"unknown runtime {rt!r}", {})
            self.kubelet.runtime_name = rt
            self.kubelet.default_caps = runtime.RUNTIME_CAPS[rt]
        if "default_caps" in body:
            self.kubelet.default_caps = tuple(c.upper() for c in body["default_caps"])
            self.kubelet.runtime_name = "custom"
        return await self.ctl_get(request)

    async def ctl_faults(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.faults = Faults()
        else:
            body = await request.json()
            for k, v in body.items():
                if not hasattr(self.faults, k):
                    raise ApiError(400, "BadRequest", f"unknown fault {k!r}", {})
                setattr(self.faults, k, v)
        return web.json_response(self.faults.__dict__)

    async def ctl_pod(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pr = self.kubelet.pods.get((ns, name))
        if pr is None:
            raise not_found("pods", name)
        procs = await asyncio.to_thread(self.kubelet.processes, ns, name)
        return web.json_response({"netns": pr.netns, "ipv4": pr.ipv4, "ipv6": pr.ipv6,
                                  "processes": procs})


class ExecSession:
    """One exec stream: a real process in the pod netns wired to websocket channels."""

    def __init__(self, api: Api, request: web.Request, ws: web.WebSocketResponse, pr: Any,
                 pod: Obj, container: dict[str, Any], argv: list[str], *, stdin: bool,
                 stdout: bool, stderr: bool) -> None:
        self.api, self.request, self.ws = api, request, ws
        self.pr, self.pod, self.container, self.argv = pr, pod, container, argv
        self.want = (stdin, stdout, stderr)
        self.v5 = ws.ws_protocol == "v5.channel.k8s.io"
        self.fds: dict[str, int] = {}
        self.gone = asyncio.Event()
        self.exited = asyncio.Event()
        self.stdout_bytes = 0
        self.drop_after: int | None = None
        if api.faults.exec_drop_count > 0 and api.faults.exec_drop_after is not None \
                and api.faults.exec_drop_match in request.path_qs:
            api.faults.exec_drop_count -= 1
            self.drop_after = int(api.faults.exec_drop_after)

    def _pipe(self, readable_by_us: bool) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(r, F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(r if readable_by_us else w, False)
        return r, w

    def _close(self, key: str) -> None:
        fd = self.fds.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def run(self) -> None:
        child: dict[str, int] = {}
        if self.want[0]:
            r, w = self._pipe(False)
            child["stdin"], self.fds["stdin"] = r, w
        for key, wanted in (("stdout", self.want[1]), ("stderr", self.want[2])):
            if wanted:
                r, w = self._pipe(True)
                child[key], self.fds[key] = w, r
        try:
            proc = self.api.kubelet.exec_process(
                self.pr, self.pod, self.container, self.argv,
                stdin=child.get("stdin", subprocess.DEVNULL),
                stdout=child.get("stdout", subprocess.DEVNULL),
                stderr=child.get("stderr", subprocess.DEVNULL))
        except OSError as e:
            for fd in child.values():
                os.close(fd)
            await self._status({"metadata": {}, "status": "Failure", "reason": "InternalError",
                                "message": f"Internal error occurred: {e}"})
            return
        finally:
            for fd in child.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        from .kubelet import wait_exit

        loop = asyncio.get_running_loop()
        exit_task = loop.create_task(wait_exit(proc))
        exit_task.add_done_callback(lambda _t: self.exited.set())
        reader = loop.create_task(self._read_client())
        pumps = [loop.create_task(self._pump(k, ch)) for k, ch in (("stdout", 1), ("stderr", 2))
                 if k in self.fds]
        gone_wait = loop.create_task(self.gone.wait())
        done_all = loop.create_task(self._all(pumps, exit_task))
        await asyncio.wait({gone_wait, done_all}, return_when=asyncio.FIRST_COMPLETED)
        if self.gone.is_set():
            # Like a real node: the process is not killed; its pipes just lose their other end.
            for t in pumps:
                t.cancel()
            for k in list(self.fds):
                self._close(k)
            done_all.cancel()
            reader.cancel()
            # Reap it when it ends on its own (exit_task keeps running).
            return
        gone_wait.cancel()
        rc = exit_task.result()
        if rc == 0:
            st: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            code = rc if rc > 0 else 128 - rc
            st = {"metadata": {}, "status": "Failure",
                  "message": "command terminated with non-zero exit code: error executing "
                             f"command [{' '.join(self.argv)}], exit code {code}",
                  "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        self._close("stdin")
        await self._status(st)
        reader.cancel()

    async def _all(self, pumps: list[asyncio.Task[None]], exit_task: asyncio.Task[int]) -> None:
        # Shielded: cancelling this wait (the client went away) must not cancel the reaping of
        # the process, or it stays a zombie that `kill -0` still finds, like a live process.
        await asyncio.gather(*pumps, asyncio.shield(exit_task))

    async def _status(self, st: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(b"\x03" + json.dumps(st).encode())
            await self.ws.close()

    def _abort(self) -> None:
        tr = self.request.transport
        if tr is not None:
            tr.abort()
        self.gone.set()

    async def _pump(self, key: str, ch: int) -> None:
        loop = asyncio.get_running_loop()
        fd = self.fds[key]
        prefix = bytes([ch])
        idle_since: float | None = None
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _wake, fut)
                try:
                    await asyncio.wait_for(fut, 0.5)
                    idle_since = None
                except asyncio.TimeoutError:
                    # A background child may hold the pipe after the main process exited;
                    # stop reading once it has been quiet for a second.
                    if self.exited.is_set():
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > 1.0:
                            return
                finally:
                    loop.remove_reader(fd)
                continue
            except OSError:
                return
            if not data:
                return
            if ch == 1 and self.drop_after is not None:
                room = self.drop_after - self.stdout_bytes
                if room <= len(data):
                    if room > 0:
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await self.ws.send_bytes(prefix + data[:room])
                    self.stdout_bytes += max(room, 0)
                    self._abort()
                    return
            try:
                await self.ws.send_bytes(prefix + data)
            except (ConnectionError, RuntimeError):
                self.gone.set()
                return
            if ch == 1:
                self.stdout_bytes += len(data)

    async def _read_client(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY or not msg.data:
                    continue
                ch, payload = msg.data[0], msg.data[1:]
                if ch == 0 and "stdin" in self.fds:
                    await self._write_stdin(payload)
                elif ch == 255 and self.v5 and payload[:1] == b"\x00":
                    self._close("stdin")
        except (ConnectionError, asyncio.CancelledError):
            pass
        # The client closed or vanished before the command finished.
        if not self.exited.is_set():
            self.gone.set()

    async def _write_stdin(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            fd = self.fds.get("stdin")
            if fd is None:
                return
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, _wake, fut)
                try:
                    await fut
                finally:
                    loop.remove_writer(fd)
            except OSError:
                self._close("stdin")
                return


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def json_patch(cur: Obj, ops: Any) -> Obj:
    """RFC 6902 add/replace/remove: what ``kubectl patch --type=json`` sends."""
    doc = copy.deepcopy(cur)
    for op in ops if isinstance(ops, list) else []:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for p in path[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = path[-1]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(idx, op["value"])
            elif op["op"] == "replace":
                parent[idx] = op["value"]
            elif op["op"] == "remove":
                parent.pop(idx)
        elif op["op"] in ("add", "replace"):
            parent[last] = op["value"]
        elif op["op"] == "remove":
            parent.pop(last, None)
    return doc


OPENAPI_HASH = "5A1F0C0E0A0D0E0F"


def openapi_core_v1() -> dict[str, Any]:
    """A minimal OpenAPI v3 document for core/v1.

    kubectl apply/create only need it to learn that PATCH/POST accept ``fieldValidation`` (then
    validation is left to the server and no v2 protobuf schema is downloaded).  With no schemas
    under components, kubectl computes strategic merge patches from its compiled-in Go types.
    """
    query = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
             for n in ("dryRun", "fieldManager", "fieldValidation", "pretty")]
    paths: dict[str, Any] = {}
    for resource, kind in KINDS.items():
        gvk = {"group": "", "version": "v1", "kind": kind}
        ok = {"200": {"description": "OK"}, "201": {"description": "Created"}}
        coll = (f"/api/v1/{resource}" if resource in CLUSTER_SCOPED
                else f"/api/v1/namespaces/{{namespace}}/{resource}")
        item = coll + "/{name}"
        paths[coll] = {"post": {"operationId": f"create{kind}", "parameters": query,
                                "x-kubernetes-action": "post",
                                "x-kubernetes-group-version-kind": gvk, "responses": ok}}
        paths[item] = {"parameters": query, "patch": {
            "operationId": f"patch{kind}", "parameters": query + [
                {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
            "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
            "responses": ok}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}


def build_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[api.middleware], client_max_size=64 * 1024 * 1024)
    r = app.router
    r.add_get("/version", api.version)
    r.add_get("/api", api.api)
    r.add_get("/api/v1", api.api_v1)
    r.add_get("/apis", api.apis)
    r.add_route("*", "/api/v1/{tail:.+}", api.rest)
    r.add_get("/openapi/v3", api.openapi_v3)
    r.add_get("/openapi/v3/{gv:.+}", api.openapi_v3_gv)
    r.add_get("/zsniff-test/state", api.ctl_get)
    r.add_post("/zsniff-test/settings", api.ctl_settings)
    r.add_route("POST", "/zsniff-test/faults", api.ctl_faults)
    r.add_route("DELETE", "/zsniff-test/faults", api.ctl_faults)
    r.add_get("/zsniff-test/pods/{ns}/{name}", api.ctl_pod)
    r.add_route("*", "/{tail:.*}", api.not_found_plain)
    return app


def _certificate_user(request: web.Request) -> str | None:
    """The CN of a verified client certificate (the TLS layer checked it against the CA)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def serve(state_dir: Path, port: int, scheme: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api = Api(state_dir, port)
    api.bootstrap()

    async def main() -> None:
        runner = web.AppRunner(build_app(api), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sslctx = None
        if scheme == "https":
            sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            pki = state_dir / "pki"
            sslctx.load_cert_chain(pki / "server.crt", pki / "server.key")
            # Client certificates are optional (token users send none) but verified if sent.
            sslctx.verify_mode = ssl.CERT_OPTIONAL
            sslctx.load_verify_locations(pki / "ca.crt")
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=sslctx)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("serving on 127.0.0.1:%d prefix %s", port, api.prefix)
        await stop.wait()
        log.info("shutting down")
        api.kubelet.shutdown()
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        runtime.cleanup_prefix(api.prefix)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--scheme", choices=["http", "https"], default="https")
    a = ap.parse_args()
    serve(a.state, a.port, a.scheme)
