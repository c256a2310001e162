"""The Kubernetes Status document (metav1.Status), read once, and the one mapping of the API
server's refusals, and of failures to reach it at all, to the project's errors, for REST calls
and exec handshakes alike.

Pure: no client, no network. The REST client (client.py) and the exec websocket (wire/execws.py)
both hand it the HTTP code and the response body, or what kept the answer from coming.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kubectl_zsniff.errors import ExitStatus, ZsniffError

# Longest part of a non-Status body kept as the message (an HTML error page is no message).
_TEXT_LIMIT = 500

# Words of a 4xx answer that mean the pod cannot run a command (yet, or any more).
_NOT_RUNNING_WORDS = (
    "does not have a host assigned",
    "completed pod",
    "not running",
    "pending",
    "containercreating",
)


@dataclass(frozen=True)
class ApiStatus:
    """What a Status document says; built from a plain-text body too (older servers)."""

    status: str = ""  # "Success", "Failure", or "" when the body said nothing
    message: str = ""
    reason: str = ""
    code: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: bytes | bytearray | str | None) -> ApiStatus:
        if not body:
            return cls()
        text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return cls(status="Failure", message=text.strip()[:_TEXT_LIMIT])
        code = doc.get("code")
        details = doc.get("details")
        return cls(
            status=str(doc.get("status") or ""),
            message=str(doc.get("message") or "").strip(),
            reason=str(doc.get("reason") or ""),
            code=code if isinstance(code, int) else 0,
            details=details if isinstance(details, dict) else {},
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "Success"

    @property
    def exit_code(self) -> int | None:
        """0 for Success, N for NonZeroExitCode with an ExitCode cause, None otherwise."""
        if self.succeeded:
            return 0
        if self.reason != "NonZeroExitCode":
            return None
        for cause in self.details.get("causes") or ():
            if isinstance(cause, Mapping) and cause.get("reason") == "ExitCode":
                try:
                    return int(str(cause.get("message")))
                except ValueError:
                    return None
        return None


@dataclass(frozen=True)
class _Context:
    action: str
    namespace: str | None
    pod: str | None
    server: str
    retried: bool

    @property
    def the_server(self) -> str:
        return f"the API server {self.server}" if self.server else "the API server"

    @property
    def in_ns(self) -> str:
        return f" -n {self.namespace}" if self.namespace else ""

    def pod_hint(self, text: str) -> str:
        """`text` with the pod and namespace put in, or nothing when the pod is not known."""
        return text.format(pod=self.pod, in_ns=self.in_ns) if self.pod else ""


def api_refusal(
    code: int,
    status: ApiStatus,
    action: str,
    *,
    namespace: str | None = None,
    pod: str | None = None,
    server: str = "",
    retried: bool = False,
) -> ZsniffError:
    """The error for an HTTP `code` >= 400 answered to `action` ("verb resource", as
    `kubectl auth can-i` takes it), with hints for the namespace and pod when known."""
    ctx = _Context(action, namespace, pod, server, retried)
    if code in (401, 403):
        return _access_refusal(code, status.message, ctx)
    if code == 404 or status.reason == "NotFound":
        return ZsniffError(
            status.message or f"not found while trying to {action} (HTTP 404)",
            f"check the names: kubectl get pods{ctx.in_ns}" if namespace else "",
            ExitStatus.NOT_FOUND,
        )
    if code >= 500 or code == 429:
        return _server_failure(code, status.message, ctx)
    return _request_refusal(code, status.message, ctx)


def _access_refusal(code: int, message: str, ctx: _Context) -> ZsniffError:
    if code == 401:
        return ZsniffError(
            f"{ctx.the_server} rejected the credentials while trying to {ctx.action} "
            "(HTTP 401 Unauthorized)",
            "refresh your login (for example `gcloud auth login`, `aws sso login`, or any "
            "kubectl command) or check the user in the kubeconfig: its token or client "
            "certificate may have expired",
            ExitStatus.UNAUTHORIZED,
        )
    if "violates PodSecurity" in message:
        return ZsniffError(
            f"PodSecurity rejected the capture container: {message}",
            "the namespace's pod-security.kubernetes.io/enforce level forbids it; "
            "ask an admin for a namespace at the privileged level or see the README (PodSecurity)",
            ExitStatus.POD_SECURITY,
        )
    return ZsniffError(
        f"forbidden to {ctx.action}: {message}" if message else f"forbidden to {ctx.action}",
        "ask your cluster admin for that permission; check with "
        f"`kubectl auth can-i {ctx.action}{ctx.in_ns}`",
        ExitStatus.FORBIDDEN,
    )


def _server_failure(code: int, message: str, ctx: _Context) -> ZsniffError:
    if "container not found" in message.lower():
        return ZsniffError(
            message,
            ctx.pod_hint("is the container running? kubectl get pod {pod}{in_ns}"),
            ExitStatus.NOT_FOUND,
        )
    detail = f": {message}" if message else ""
    failed = "kept failing while trying to" if ctx.retried else "failed to"
    return ZsniffError(
        f"{ctx.the_server} {failed} {ctx.action} (HTTP {code}{detail})",
        "the control plane or the node's kubelet may be overloaded or restarting; "
        "try again in a moment",
        ExitStatus.UNREACHABLE,
    )


def _request_refusal(code: int, message: str, ctx: _Context) -> ZsniffError:
    low = message.lower()
    if any(word in low for word in _NOT_RUNNING_WORDS):
        return ZsniffError(
            message,
            ctx.pod_hint("check the pod's state: kubectl get pod {pod}{in_ns}"),
            ExitStatus.POD_NOT_RUNNING,
        )
    if "not valid for pod" in low or "not found" in low:
        return ZsniffError(
            message,
            ctx.pod_hint("list the containers: kubectl get pod {pod}{in_ns} -o yaml"),
            ExitStatus.NOT_FOUND,
        )
    return ZsniffError(
        f"{ctx.the_server} refused to {ctx.action}: {message}" if message
        else f"{ctx.the_server} refused to {ctx.action} (HTTP {code})",
        "",
        ExitStatus.ERROR,
    )


class Unreachable(Enum):
    """Why no answer came from the API server at all."""

    PROXY = "proxy"  # the kubeconfig's proxy-url could not be reached
    TLS_UNTRUSTED = "tls-untrusted"  # the server's certificate failed verification
    TLS = "tls"  # any other TLS handshake failure
    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECTION = "connection"  # refused, reset, no route...


def unreachable_kind(exc: BaseException) -> Unreachable | None:
    """The failure the standard library raised opening a connection (the exec websocket's
    own); None: not a connection failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Unreachable.TLS_UNTRUSTED
    if isinstance(exc, ssl.SSLError):
        return Unreachable.TLS
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Unreachable.TIMEOUT
    if isinstance(exc, socket.gaierror):
        return Unreachable.DNS
    if isinstance(exc, OSError):
        return Unreachable.CONNECTION
    return None


def unreachable_kind_in(text: str) -> Unreachable:
    """The failure the official client met, read from its words: it wraps the cause
    (urllib3's MaxRetryError, an ApiException of status 0) and names it only in its text."""
    if "Unable to connect to proxy" in text:
        return Unreachable.PROXY
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "SSLCertVerification" in text:
        return Unreachable.TLS_UNTRUSTED
    if "timed out" in text.lower() or "Timeout" in text:
        return Unreachable.TIMEOUT
    return Unreachable.CONNECTION


@dataclass(frozen=True)
class _Words:
    message: str  # {server}: the API server's host; {detail}: what the failure said
    hint: str


_REQUEST_TLS = _Words(
    "TLS verification of the API server failed{detail}",
    "check certificate-authority(-data) in the kubeconfig; "
    "verification stays on unless the kubeconfig itself sets insecure-skip-tls-verify")
_REQUEST_CONNECTION = _Words(
    "cannot reach the API server: {detail}",
    "is the cluster running and the kubeconfig's server address right? (kubectl cluster-info)")

# Each failure in two situations: a REST request (the official client's: the request timeout
# governs it, and its failure text is all there is), and opening the exec websocket to a
# named server (our own connect: the cause is typed, the host at hand).
_UNREACHABLE_WORDS: dict[Unreachable, tuple[_Words, _Words]] = {
    Unreachable.PROXY: (
        _Words("cannot reach the proxy named by the kubeconfig's proxy-url",
               "check proxy-url in the kubeconfig (kubectl config view --minify), and the proxy"),
    ) * 2,
    Unreachable.TLS_UNTRUSTED: (_REQUEST_TLS, _Words(
        "TLS certificate verification failed for the API server {server}: {detail}",
        "check certificate-authority(-data) and tls-server-name of the cluster in your "
        "kubeconfig")),
    Unreachable.TLS: (_REQUEST_TLS, _Words(
        "TLS handshake with the API server {server} failed: {detail}",
        "check that the kubeconfig server URL uses the right scheme (https) and port")),
    Unreachable.TIMEOUT: (_Words(
        "the API server did not answer in time",
        "check the network or VPN to the cluster, or raise --request-timeout",
    ), _Words(
        "timed out connecting to the API server {server}",
        "check the network path to the cluster (VPN, firewall) and the server URL")),
    Unreachable.DNS: (_REQUEST_CONNECTION, _Words(
        "cannot resolve the API server host {server}",
        "check the server URL in your kubeconfig and your DNS")),
    Unreachable.CONNECTION: (_REQUEST_CONNECTION, _Words(
        "cannot connect to the API server {server}: {detail}",
        "is the cluster running and the kubeconfig server URL right?")),
}


def unreachable_error(kind: Unreachable, detail: str, server: str | None = None) -> ZsniffError:
    """The error for an API server that could not be reached: by a REST request (`server`
    None), or by the exec websocket opening to `server`."""
    request, connect = _UNREACHABLE_WORDS[kind]
    words = request if server is None else connect
    return ZsniffError(words.message.format(server=server, detail=detail), words.hint,
                       ExitStatus.UNREACHABLE)
