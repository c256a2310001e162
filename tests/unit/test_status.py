"""The one Status reader and the one mapping of API refusals and of an API server not reached:
what each answer (or its absence) becomes for the user (exit status, words of the message,
words of the hint), for REST calls and exec alike."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

from kubectl_zsniff.errors import ExitStatus
from kubectl_zsniff.kube.status import (
    ApiStatus,
    Unreachable,
    api_refusal,
    unreachable_error,
    unreachable_kind,
    unreachable_kind_in,
)


def status(message: str, reason: str = "", code: int = 0) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


def test_a_status_document_and_a_plain_body_are_read_alike() -> None:
    doc = ApiStatus.parse(status('pods "web" not found', "NotFound", 404))
    assert (doc.status, doc.message, doc.reason, doc.code) == (
        "Failure", 'pods "web" not found', "NotFound", 404)
    text = ApiStatus.parse(b"container not found (\"app\")\n")
    assert (text.status, text.message, text.reason) == ("Failure", 'container not found ("app")',
                                                        "")
    page = ApiStatus.parse(b"<html>" + b"x" * 5000)
    assert len(page.message) == 500
    assert ApiStatus.parse(None) == ApiStatus() and ApiStatus.parse("") == ApiStatus()
    assert ApiStatus.parse(b"[1, 2]").message == "[1, 2]"  # JSON, but not a Status


@pytest.mark.parametrize("code, body, kw, exit_status, in_message, in_hint", [
    (401, b"", {}, ExitStatus.UNAUTHORIZED, "rejected the credentials while trying to list pods",
     "gcloud auth login"),
    (403, status('pods "web" is forbidden: violates PodSecurity "baseline:latest"'), {},
     ExitStatus.POD_SECURITY, "PodSecurity rejected the capture container", "enforce level"),
    (403, status('pods is forbidden: User "dev" cannot list resource "pods"'),
     {"namespace": "shop"},
     ExitStatus.FORBIDDEN, 'forbidden to list pods: pods is forbidden: User "dev"',
     "kubectl auth can-i list pods -n shop"),
    (403, b"", {}, ExitStatus.FORBIDDEN, "forbidden to list pods", "kubectl auth can-i list pods`"),
    (404, status('pods "web" not found', "NotFound"), {"namespace": "shop"},
     ExitStatus.NOT_FOUND, 'pods "web" not found', "kubectl get pods -n shop"),
    (404, b"", {}, ExitStatus.NOT_FOUND, "not found while trying to list pods (HTTP 404)", ""),
    (400, status("pod web does not have a host assigned"), {"pod": "web", "namespace": "shop"},
     ExitStatus.POD_NOT_RUNNING, "does not have a host assigned", "kubectl get pod web -n shop"),
    (400, status('container nope is not valid for pod web'), {"pod": "web", "namespace": "shop"},
     ExitStatus.NOT_FOUND, "is not valid for pod web", "-o yaml"),
    (422, status("spec.ephemeralContainers: Forbidden: existing ephemeral containers may not "
                 "be changed"), {}, ExitStatus.ERROR,
     "the API server refused to list pods: spec.ephemeralContainers", ""),
    (500, status("etcdserver: request timed out"), {"retried": True}, ExitStatus.UNREACHABLE,
     "kept failing while trying to list pods (HTTP 500: etcdserver", "try again"),
    (503, b"", {"server": "10.0.0.1:6443"}, ExitStatus.UNREACHABLE,
     "the API server 10.0.0.1:6443 failed to list pods (HTTP 503)", "kubelet"),
    (429, status("too many requests"), {"retried": True}, ExitStatus.UNREACHABLE,
     "kept failing", ""),
    (500, b'container not found ("app")', {"pod": "web", "namespace": "shop"},
     ExitStatus.NOT_FOUND, "container not found", "is the container running?"),
])
def test_each_refusal_has_its_exit_status_message_and_hint(
        code: int, body: bytes, kw: dict[str, object], exit_status: ExitStatus,
        in_message: str, in_hint: str) -> None:
    err = api_refusal(code, ApiStatus.parse(body), "list pods", **kw)  # type: ignore[arg-type]
    assert err.status == exit_status, err.message
    assert in_message in err.message, err.message
    assert in_hint in err.hint, err.hint
    assert "\n" not in err.message  # one line


class _WrappedFailure(Exception):
    """What the official client raises for a transport failure: the cause only in its words
    (urllib3's MaxRetryError carries it in `reason`)."""

    def __init__(self, text: str, reason: str = "") -> None:
        super().__init__(text)
        self.reason = reason


@pytest.mark.parametrize("failure,message,in_hint", [
    (_WrappedFailure("Unable to connect to proxy", "ProxyError('Unable to connect to proxy')"),
     "cannot reach the proxy named by the kubeconfig's proxy-url", "kubectl config view"),
    (_WrappedFailure("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                     "certificate in certificate chain (_ssl.c:1006)"),
     "TLS verification of the API server failed: self-signed certificate in certificate chain",
     "insecure-skip-tls-verify"),
    (_WrappedFailure("Read timed out. (read timeout=5)"),
     "the API server did not answer in time", "--request-timeout"),
    (_WrappedFailure("Max retries exceeded", "NewConnectionError('Connection refused')"),
     "cannot reach the API server: NewConnectionError('Connection refused')",
     "kubectl cluster-info"),
])
def test_a_rest_request_that_gets_no_answer_is_unreachable(
        failure: Exception, message: str, in_hint: str) -> None:
    from kubectl_zsniff.kube.client import connection_error

    err = connection_error(failure)
    assert (err.status, err.message) == (ExitStatus.UNREACHABLE, message)
    assert in_hint in err.hint


@pytest.mark.parametrize("failure,message", [
    (TimeoutError("timed out"), "timed out connecting to the API server api:6443"),
    (socket.gaierror(-2, "Name or service not known"),
     "cannot resolve the API server host api:6443"),
    (ConnectionRefusedError(111, "Connection refused"),
     "cannot connect to the API server api:6443: Connection refused"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
     "TLS handshake with the API server api:6443 failed: "),
])
def test_an_exec_websocket_that_cannot_connect_names_the_server(
        failure: OSError, message: str) -> None:
    kind = unreachable_kind(failure)
    assert kind is not None
    detail = failure.strerror or "" if not isinstance(failure, ssl.SSLError) else ""
    err = unreachable_error(kind, detail, server="api:6443")
    assert (err.status, err.message) == (ExitStatus.UNREACHABLE, message)
    assert err.hint


def test_what_is_not_a_connection_failure_is_left_alone() -> None:
    assert unreachable_kind(ValueError("a bug")) is None
    assert unreachable_kind_in("anything else") is Unreachable.CONNECTION
