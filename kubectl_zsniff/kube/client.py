"""Access to the Kubernetes API: kubeconfig, context and namespace, auth, and error translation.

This is the one place that turns the official client's exceptions into the project's errors.
The `kubernetes` package is slow to import (~0.35 s), so it is imported only when a client is built.

REST calls go through the official client's ``ApiClient`` (kubeconfig, exec credential plugins,
TLS, proxy) but answer plain JSON documents, not the generated models: the generated
``CoreV1Api`` costs ~0.9 s to import, and building models is ~6x slower than ``json.loads``
(measured: 2,000 pods, 1.05 s against 0.18 s). zsniff reads a handful of fields.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from kubectl_zsniff.errors import ExitStatus, ZsniffError
from kubectl_zsniff.kube.status import (
    ApiStatus,
    Unreachable,
    api_refusal,
    unreachable_error,
    unreachable_kind_in,
)
from kubectl_zsniff.options import KubeOptions
from kubectl_zsniff.wire.endpoint import ApiEndpoint, unsupported_proxy

T = TypeVar("T")
JSON = dict[str, Any]
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}


class ApiExceptionLike(Protocol):
    """What api_error reads of the kubernetes client's ApiException (an untyped class)."""

    status: int | None
    reason: str | None
    body: str | None


def api_path(*segments: str, namespace: str | None = None) -> str:
    """``/api/v1[/namespaces/NS]/SEGMENTS...``, each segment escaped."""
    path = "/api/v1"
    if namespace is not None:
        path += "/namespaces/" + quote(namespace, safe="")
    return path + "".join("/" + quote(s, safe="") for s in segments)


def field(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` or None where anything on the way is missing."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def pod_ips(pod: JSON) -> list[str]:
    """The pod's addresses (dual-stack: both), from status.podIPs or the older podIP."""
    status = pod.get("status") or {}
    ips = [str(p["ip"]) for p in status.get("podIPs") or () if p.get("ip")]
    return ips or ([str(status["podIP"])] if status.get("podIP") else [])


@dataclass
class KubeClient:
    api: Any  # kubernetes.client.ApiClient: auth, TLS, HTTP of the official client
    configuration: Any
    namespace: str
    context_name: str
    request_timeout: float | None

    def get(self, action: str, path: str, **query: Any) -> JSON:
        """GET a JSON document, retrying briefly on throttling and transient server errors."""
        return self.request(action, "GET", path, query)

    def patch(self, action: str, path: str, body: JSON,
              content_type: str = STRATEGIC_MERGE_PATCH) -> JSON:
        return self.request(action, "PATCH", path, None, body, content_type)

    def request(self, action: str, method: str, path: str, query: Mapping[str, Any] | None = None,
                body: JSON | None = None, content_type: str | None = None) -> JSON:
        def once() -> JSON:
            resp = self._send(method, path, query, body, content_type, self.request_timeout)
            try:
                data = resp.data
            finally:
                resp.release_conn()
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError(f"the API server answered {type(doc).__name__}, not an object")
            return doc

        return call_with_retries(action, once)

    def watch(self, action: str, path: str, timeout_seconds: int,
              **query: Any) -> Iterator[JSON]:
        """The events ({"type", "object"}) of one watch request, until the server ends it.

        Opening the watch is retried like any call; a failure while reading raises the
        client's own exception (callers re-list and watch again).
        """
        params = {**query, "watch": "true", "timeoutSeconds": timeout_seconds}
        # A read timeout beyond the server's own end: a silently dead connection fails too.
        read_timeout = float(timeout_seconds) + 15.0
        resp = call_with_retries(
            action, lambda: self._send("GET", path, params, None, None, read_timeout))
        read_to_end = False
        try:
            pending = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
            read_to_end = True
        finally:
            if not read_to_end:
                resp.close()  # a half-read connection must not go back to the pool
            resp.release_conn()

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: JSON | None,
              content_type: str | None, timeout: float | None) -> Any:
        """One HTTP request through the official client; its urllib3 response, not read."""
        api = self.api
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        if hasattr(api, "param_serialize"):  # clients made by openapi-generator 7
            method, url, headers, body, _ = api.param_serialize(
                method=method, resource_path=path, query_params=params, header_params=headers,
                body=body, auth_settings=["BearerToken"])
            raw = api.call_api(method, url, header_params=headers, body=body,
                               _request_timeout=timeout).response
        else:  # the older generator (kubernetes < 3x): raises ApiException on errors itself
            raw = api.call_api(
                path, method, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False,
                _return_http_data_only=True, _request_timeout=timeout)
        if not 200 <= raw.status <= 299:
            from kubernetes.client.exceptions import ApiException

            try:
                text = raw.data.decode("utf-8", "replace")
            finally:
                raw.release_conn()
            exc = ApiException(status=raw.status, reason=raw.reason)
            exc.body = text
            exc.headers = raw.headers
            raise exc
        return raw

    def endpoint(self) -> ApiEndpoint:
        return endpoint_from_configuration(self.configuration)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def call_with_retries(action: str, call: Callable[[], T], attempts: int = 5) -> T:
    from kubernetes.client.exceptions import ApiException

    delay = 0.2
    for attempt in range(attempts):
        try:
            return call()
        except ApiException as exc:
            if not exc.status:  # the client wraps transport failures (TLS...) as status 0
                raise connection_error(exc) from exc
            if exc.status not in RETRYABLE_STATUSES or attempt == attempts - 1:
                raise api_error(exc, action) from exc
            retry_after = _retry_after_seconds(exc)
            time.sleep(min(retry_after if retry_after is not None else delay, 5.0))
            delay *= 2
        except Exception as exc:
            # A dropped keep-alive connection is worth one more try; a refused one is not.
            text = repr(exc)
            transient = "RemoteDisconnected" in text or "Connection reset" in text
            if not transient or attempt >= 1:
                raise connection_error(exc) from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


def _retry_after_seconds(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def load_client(opts: KubeOptions) -> KubeClient:
    """Build an API client the way kubectl would: flags, then KUBECONFIG, then in-cluster."""
    try:
        from kubernetes import client
    except ImportError as exc:  # pragma: no cover - a broken installation
        raise ZsniffError(
            "the kubernetes Python package is missing", "reinstall kubectl-zsniff", ExitStatus.ERROR
        ) from exc

    configuration = client.Configuration()
    # urllib3 would retry 429/503 itself, under our own retries: one policy, ours.
    configuration.retries = False
    context_name, namespace = _load_configuration(opts, configuration)

    # Before any request, rather than fail halfway (urllib3 would want PySocks for socks5://).
    refused = unsupported_proxy(getattr(configuration, "proxy", None) or None)
    if refused is not None:
        raise refused
    return KubeClient(
        api=client.ApiClient(configuration),
        configuration=configuration,
        namespace=opts.namespace or namespace or "default",
        context_name=context_name,
        request_timeout=opts.request_timeout,
    )


def _load_configuration(opts: KubeOptions, configuration: Any) -> tuple[str, str | None]:
    """Fill `configuration` from the kubeconfig (or in-cluster); (context name, its namespace).
    Every way loading fails becomes one of the project's errors."""
    import yaml
    from kubernetes.config.config_exception import ConfigException

    kubeconfig = opts.kubeconfig or os.environ.get("KUBECONFIG") or None
    default_path = Path("~/.kube/config").expanduser()
    config_file = ""
    try:
        if kubeconfig is None and not default_path.exists() and os.environ.get(
                "KUBERNETES_SERVICE_HOST"):
            return _load_in_cluster(configuration)
        config_file = _config_files(opts.kubeconfig, kubeconfig, default_path)
        return _load_kubeconfig(config_file, opts.context, configuration)
    except ZsniffError:
        raise
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, config_file) from exc
    except ConfigException as exc:
        raise ZsniffError(
            f"cannot load the Kubernetes configuration: {_first_line(exc)}",
            "check --kubeconfig, --context or the KUBECONFIG variable (kubectl config view)",
            ExitStatus.USAGE,
        ) from exc
    except FileNotFoundError as exc:
        raise ZsniffError(
            f"cannot load the Kubernetes configuration: {exc.filename or exc} not found",
            "is an exec credential plugin (gke-gcloud-auth-plugin, aws, kubelogin) installed?",
            ExitStatus.UNAUTHORIZED,
        ) from exc
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ZsniffError(
            f"cannot load the Kubernetes configuration: {_first_line(exc)}",
            "check the kubeconfig file (kubectl config view)",
            ExitStatus.USAGE,
        ) from exc


def _load_in_cluster(configuration: Any) -> tuple[str, str | None]:
    from kubernetes import config

    # The kubernetes package has no type hints.
    config.load_incluster_config(  # type: ignore[no-untyped-call]
        client_configuration=configuration)
    namespace = None
    if IN_CLUSTER_NAMESPACE_FILE.exists():
        namespace = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
    return "in-cluster", namespace


def _load_kubeconfig(config_file: str, context: str | None,
                     configuration: Any) -> tuple[str, str | None]:
    from kubernetes import config

    contexts, chosen = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=config_file)
    if context:
        matches = [c for c in contexts if c.get("name") == context]
        if not matches:
            names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
            raise ZsniffError(
                f'context "{context}" not found in the kubeconfig',
                f"known contexts: {names}",
                ExitStatus.USAGE,
            )
        chosen = matches[0]
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=config_file,
        context=context,
        client_configuration=configuration,
        persist_config=False,
    )
    context_name = str(chosen.get("name", "")) if chosen else ""
    namespace = (chosen or {}).get("context", {}).get("namespace")
    return context_name, str(namespace) if namespace else None


def endpoint_from_configuration(cfg: Any) -> ApiEndpoint:
    """Build an ``ApiEndpoint`` from an official ``kubernetes.client.Configuration``.

    TLS verification stays on unless the kubeconfig itself said insecure-skip-tls-verify
    (``verify_ssl`` False). The token is read through ``get_api_key_with_prefix``, which first
    runs ``refresh_api_key_hook`` so exec credential plugins and expired tokens are refreshed.
    """
    host = str(cfg.host).rstrip("/")
    headers: dict[str, str] = {}
    # kube_config sets api_key["BearerToken"] = "Bearer x"; in-cluster config sets
    # api_key["authorization"] with a prefix: the alias covers both.
    try:
        token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    except TypeError:  # kubernetes < 3x: no alias argument
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
            "authorization")
    if token:
        headers["Authorization"] = token
    elif getattr(cfg, "username", None) or getattr(cfg, "password", None):
        basic = cfg.get_basic_auth_token()
        if basic:
            headers["Authorization"] = basic

    ctx: ssl.SSLContext | None = None
    if host.startswith("https://"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif getattr(cfg, "assert_hostname", None) is False:
            ctx.check_hostname = False
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ApiEndpoint(
        base_url=host,
        headers=headers,
        ssl_context=ctx,
        proxy=getattr(cfg, "proxy", None) or None,
        server_hostname=getattr(cfg, "tls_server_name", None) or None,
    )



def _config_files(flag: str | None, kubeconfig: str | None, default_path: Path) -> str:
    """The kubeconfig path list to load, as kubectl reads it: the --kubeconfig file must exist;
    missing entries of a KUBECONFIG list are skipped, and only a list with none left fails."""
    if flag:
        for path in flag.split(os.pathsep):
            if path and not Path(path).expanduser().exists():
                raise ZsniffError(
                    f"kubeconfig file not found: {path}",
                    "check the path given to --kubeconfig",
                    ExitStatus.USAGE,
                )
        return flag
    if kubeconfig is None:
        return str(default_path)
    entries = [p for p in kubeconfig.split(os.pathsep) if p]
    present = [p for p in entries if Path(p).expanduser().exists()]
    if not present:
        raise ZsniffError(
            "no kubeconfig file of KUBECONFIG exists: " + ", ".join(entries or ["(empty)"]),
            "check the KUBECONFIG variable (kubectl config view), or give --kubeconfig FILE",
            ExitStatus.USAGE,
        )
    return os.pathsep.join(present)


def _yaml_error(exc: Any, config_file: str) -> ZsniffError:
    """A kubeconfig that is not valid YAML: the user's file and line, not a bug."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    name = str(getattr(mark, "name", "") or "")
    if not name or name.startswith("<"):
        name = config_file
    where = f"{name}, line {mark.line + 1}" if mark is not None else name
    problem = getattr(exc, "problem", None) or _first_line(exc)
    return ZsniffError(
        f"the kubeconfig is not valid YAML: {where}: {problem}",
        "fix that line of the file (kubectl config view shows what kubectl reads)",
        ExitStatus.USAGE,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def api_error(exc: ApiExceptionLike, action: str) -> ZsniffError:
    """Translate an ApiException raised while doing `action` into a ZsniffError."""
    status = ApiStatus.parse(exc.body)
    if not status.message and exc.reason:
        status = ApiStatus(status.status or "Failure", str(exc.reason), status.reason,
                           status.code, status.details)
    code = int(exc.status or 0)
    return api_refusal(code, status, action, retried=code in RETRYABLE_STATUSES)


_TLS_REASON = re.compile(r"certificate verify failed: ([^()'\"\]]+?)(?: \(_ssl|\)|'|\"|$)")


def _tls_reason(text: str) -> str:
    """OpenSSL's words for why: `: self-signed certificate in certificate chain`,
    `: unable to get local issuer certificate`, `: certificate has expired`, a host mismatch."""
    match = _TLS_REASON.search(text)
    if match:
        return ": " + match.group(1).strip()
    mismatch = re.search(r"Hostname mismatch[^'\"]*|doesn't match [^'\"]+", text)
    return ": " + mismatch.group(0).strip() if mismatch else ""


def connection_error(exc: BaseException) -> ZsniffError:
    """Translate a transport failure (refused, DNS, TLS, timeout) into a ZsniffError."""
    text = f"{exc!r} {exc} {getattr(exc, 'reason', '')}"
    kind = unreachable_kind_in(text)
    if kind is Unreachable.TLS_UNTRUSTED:
        detail = _tls_reason(text)
    else:
        detail = str(getattr(exc, "reason", "") or _first_line(exc))[:200]
    return unreachable_error(kind, detail)
