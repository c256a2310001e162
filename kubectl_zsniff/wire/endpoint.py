"""Where the API server is and how to reach it (ApiEndpoint), and the exec URL on it."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from kubectl_zsniff.errors import ExitStatus, ZsniffError


@dataclass(frozen=True)
class ApiEndpoint:
    """Where and how to reach the API server. ``headers`` carry credentials: never shown."""

    base_url: str  # http(s)://host:port[/prefix]
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    ssl_context: ssl.SSLContext | None = None
    proxy: str | None = None  # kubeconfig proxy-url (http:// only)
    server_hostname: str | None = None  # kubeconfig tls-server-name (SNI and cert check)

    @property
    def host(self) -> str:
        """``host:port`` for messages: never the path, never credentials."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "?"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        default = 443 if parts.scheme == "https" else 80
        return f"{host}:{parts.port or default}"


def unsupported_proxy(proxy: str | None) -> ZsniffError | None:
    """The error for a proxy-url the exec stream cannot tunnel through (only http:// works);
    checked when the configuration is loaded, before any request, and again at connect."""
    if not proxy or proxy.startswith("http://"):
        return None
    return ZsniffError(
        f"the kubeconfig's proxy-url {urlsplit(proxy).scheme}:// is not supported "
        "(only http:// proxies are)",
        "use an http:// proxy in proxy-url, or reach the API server directly",
        status=ExitStatus.USAGE,
    )


def exec_url(
    endpoint: ApiEndpoint,
    namespace: str,
    pod: str,
    container: str | None,
    command: Sequence[str],
    stdin: bool,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
) -> str:
    """The ws(s):// URL of ``pods/exec``. Each argv element is its own ``command=``: no shell."""
    if not command:
        raise ValueError("exec needs a command")
    parts = urlsplit(endpoint.base_url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"API server URL must be http(s)://, got scheme {parts.scheme!r}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    prefix = parts.path.rstrip("/")
    ns_q = quote(namespace, safe="")
    pod_q = quote(pod, safe="")
    path = f"{prefix}/api/v1/namespaces/{ns_q}/pods/{pod_q}/exec"
    query: list[tuple[str, str]] = [("command", arg) for arg in command]
    if container:
        query.append(("container", container))
    # Like kubectl: only the streams asked for appear, as "true".
    for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty)):
        if wanted:
            query.append((name, "true"))
    return f"{scheme}://{parts.netloc}{path}?{urlencode(query, quote_via=quote)}"
