"""The Kubernetes Status document (metav1.Status), read once, and the one mapping of the API
server's refusals to the project's errors, for REST calls and exec handshakes alike.

Pure: no client, no network. The REST client (client.py) and the exec websocket (wire/execws.py)
both hand it the HTTP code and the response body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
