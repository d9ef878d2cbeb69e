"""The validating admission webhook: what it answers (the reconcile's own validation, brought forward to
`kubectl apply`) and its HTTPS server (every bad request a 4xx with {"error"}, the certificate reloaded
when it is renewed)."""

from __future__ import annotations

import copy
import http.client
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.certs import CA
from helpers.invalid_resources import SERVING, TRAINING, invalid_resources, names_a_break
from keras_operator.controllers import admission
from keras_operator.endpoints.webhook import MAX_BODY, PATH, WebhookServer

HOST = "ko-keras-operator-webhook.keras-system.svc"


def request(obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for `obj` (v1, the object as it would be stored)."""
    kind = obj.get("kind", "KerasTrainingJob")
    plural = {"KerasTrainingJob": "kerastrainingjobs", "KerasModelService": "kerasmodelservices"}.get(kind, "x")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "kerasoperator.dev", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "kerasoperator.dev", "version": "v1alpha1", "resource": plural},
            "namespace": "ml",
            "name": obj.get("metadata", {}).get("name"),
            "operation": operation,
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    }


def answer(obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None) -> dict[str, Any]:
    sent = request(obj, operation, old)
    got = admission.review(sent)
    assert got["kind"] == "AdmissionReview"
    assert got["apiVersion"] == "admission.k8s.io/v1"
    assert got["response"]["uid"] == sent["request"]["uid"]  # the API server matches answers by uid
    return got["response"]


def training(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TRAINING)
    doc["metadata"]["name"] = "digits"
    doc["spec"].update(changes)
    return doc


def test_valid_resources_of_both_kinds_are_admitted() -> None:
    for doc in (training(), copy.deepcopy(SERVING)):
        got = answer(doc)
        assert got["allowed"] is True, got
        assert "status" not in got
        assert "warnings" not in got


def test_an_unknown_layer_is_refused_with_a_did_you_mean() -> None:
    doc = training(model={"inputShape": [8], "layers": [{"type": "SuperDense", "units": 3}]})
    got = answer(doc)
    assert got["allowed"] is False
    assert got["status"]["code"] == 422
    message = got["status"]["message"]
    assert message.startswith("spec.model.layers[0]"), message
    assert "did you mean" in message.lower(), message


def test_a_misspelt_layer_argument_and_a_bad_service_are_refused_naming_the_field() -> None:
    got = answer(training(model={"inputShape": [8], "layers": [{"type": "Dense", "unitz": 3}]}))
    assert got["allowed"] is False
    assert "unitz" in got["status"]["message"]
    service = copy.deepcopy(SERVING)
    service["spec"]["replicas"] = -1
    got = answer(service)
    assert got["allowed"] is False
    assert got["status"]["message"].startswith("spec.replicas"), got


def test_500_generated_invalid_resources_are_refused_as_the_reconcile_would() -> None:
    refused, admitted = 0, []
    for case in invalid_resources(seed=2026, count=500, prefix="hook"):
        got = answer(case.doc)
        if got["allowed"]:
            admitted.append(case.breaks)
            continue
        refused += 1
        assert names_a_break(got["status"]["message"], case.breaks), (got["status"]["message"], case.breaks)
    # What the API's types let through are integers beyond int64, which the CRD's schema refuses itself.
    assert all(all(b.startswith("out-of-range") for b in breaks) for breaks in admitted), admitted
    assert refused >= 450, refused


def test_an_update_that_leaves_the_spec_alone_is_never_blocked() -> None:
    """A label or finalizer edit on a resource stored before the webhook existed (or before a stricter
    operator version) must go through; a spec edit is judged like a create."""
    bad = training(training={"epochs": 0})
    labelled = copy.deepcopy(bad)
    labelled["metadata"]["labels"] = {"team": "vision"}
    assert answer(labelled, "UPDATE", old=bad)["allowed"] is True
    got = answer(bad, "UPDATE", old=training())
    assert got["allowed"] is False
    assert got["status"]["message"].startswith("spec.training.epochs"), got


@pytest.mark.parametrize(
    "change",
    [
        {"operation": "DELETE"},
        {"kind": {"group": "kerasoperator.dev", "version": "v1alpha1", "kind": "SomethingElse"}},
        {"kind": {"group": "example.com", "version": "v1", "kind": "KerasTrainingJob"}},
    ],
    ids=["delete", "another-kind", "another-group"],
)
def test_what_is_not_ours_to_judge_is_admitted(change: dict[str, Any]) -> None:
    sent = request(training(training={"epochs": 0}))
    sent["request"].update(change)
    assert admission.review(sent)["response"]["allowed"] is True


def test_a_bug_in_the_check_admits_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(admission, "VALIDATORS", {**admission.VALIDATORS, "KerasTrainingJob": broken})
    got = answer(training())
    assert got["allowed"] is True
    assert "could not check" in got["warnings"][0]
    assert "a bug" not in got["warnings"][0]  # never the internal text


@pytest.mark.parametrize(
    "body", [[], {"kind": "Pod"}, {"kind": "AdmissionReview"}, {"kind": "AdmissionReview", "request": {}}]
)
def test_what_is_not_an_admission_review_is_a_bad_review(body: Any) -> None:
    with pytest.raises(admission.BadReview):
        admission.review(body)


# --- the HTTPS server ---


@pytest.fixture
def certs(tmp_path: Path) -> tuple[CA, Path]:
    ca = CA.make("webhook CA")
    return ca, ca.write_serving(tmp_path / "tls", HOST)


@pytest.fixture
def server(certs: tuple[CA, Path]) -> Iterator[WebhookServer]:
    webhook = WebhookServer(0, certs[1], host="127.0.0.1").start()
    yield webhook
    webhook.close()


def client(server: WebhookServer, ca: CA) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cadata=ca.pem)
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    return connection


def post(
    connection: http.client.HTTPConnection, body: bytes, path: str = PATH, method: str = "POST"
) -> tuple[int, Any]:
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(response.read())


def test_the_server_answers_reviews_over_https(server: WebhookServer, certs: tuple[CA, Path]) -> None:
    connection = client(server, certs[0])
    bad = training(model={"inputShape": [8], "layers": [{"type": "SuperDense"}]})
    status, body = post(connection, json.dumps(request(bad)).encode())
    assert status == 200
    assert body["response"]["allowed"] is False
    # The same kept-alive connection serves the next review (the API server reuses its connections).
    status, body = post(connection, json.dumps(request(training())).encode())
    assert status == 200
    assert body["response"]["allowed"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", PATH, b"{not json", 400),
        ("POST", PATH, b"\xff\xfe", 400),
        ("POST", PATH, b'{"kind": "Pod"}', 400),
        ("POST", "/mutate", b"{}", 404),
        ("GET", PATH, None, 405),
    ],
    ids=["not-json", "not-utf8", "not-a-review", "other-path", "get"],
)
def test_bad_requests_get_a_4xx_with_an_error(
    server: WebhookServer, certs: tuple[CA, Path], method: str, path: str, body: bytes | None, code: int
) -> None:
    status, answer_body = post(client(server, certs[0]), body or b"", path, method)
    assert status == code
    assert isinstance(answer_body.get("error"), str)
    assert answer_body["error"]


def test_an_oversized_body_is_refused_before_it_is_read(server: WebhookServer, certs: tuple[CA, Path]) -> None:
    connection = client(server, certs[0])
    connection.putrequest("POST", PATH)
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "error" in json.loads(response.read())


def test_a_silent_client_does_not_hold_up_the_others(server: WebhookServer, certs: tuple[CA, Path]) -> None:
    """The TLS handshake happens on the request's own thread: a connection that never speaks blocks nobody."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    plain = socket.create_connection(("127.0.0.1", server.port))
    plain.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\n\r\n")  # no TLS at all
    try:
        status, body = post(client(server, certs[0]), json.dumps(request(training())).encode())
        assert status == 200
        assert body["response"]["allowed"] is True
    finally:
        for sock in [*silent, plain]:
            sock.close()


def test_a_renewed_certificate_is_served_without_a_restart(server: WebhookServer, certs: tuple[CA, Path]) -> None:
    old_ca, folder = certs
    new_ca = CA.make("renewed CA")
    renewed = new_ca.write_serving(folder.parent / "renewed", HOST)
    for name in ("tls.crt", "tls.key"):  # as the kubelet swaps a Secret volume's files
        os.replace(renewed / name, folder / name)
    future = time.time() + 5
    os.utime(folder / "tls.crt", (future, future))

    def served_by(ca: CA) -> bool:
        try:
            post(client(server, ca), json.dumps(request(training())).encode())
            return True
        except ssl.SSLError:
            return False

    deadline = time.monotonic() + 10
    while not served_by(new_ca) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served_by(new_ca)
    assert not served_by(old_ca)


def test_the_operator_will_not_serve_the_webhook_without_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras_operator import main
    from keras_operator.runtime.settings import Settings

    monkeypatch.setenv("KERAS_OPERATOR_WEBHOOK_PORT", "9443")
    monkeypatch.delenv("KERAS_OPERATOR_WEBHOOK_CERT_DIR", raising=False)
    with pytest.raises(SystemExit, match="KERAS_OPERATOR_WEBHOOK_CERT_DIR"):
        main._start_webhook(Settings.from_env())


def test_connections_beyond_the_cap_are_closed_until_one_frees(server: WebhookServer, certs: tuple[CA, Path]) -> None:
    """A flood of idle connections costs a bounded number of threads; the webhook serves again once they go."""
    server.server.connections = threading.BoundedSemaphore(4)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    body = json.dumps(request(training())).encode()

    def served() -> bool:
        try:
            return post(client(server, certs[0]), body)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    try:
        time.sleep(0.5)  # the four are accepted and hold their threads
        assert not served()
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while not served():
        assert time.monotonic() < deadline, "never served again"
        time.sleep(0.1)


def test_a_trickled_body_gets_a_408_and_frees_its_check_slot(
    server: WebhookServer, certs: tuple[CA, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending its body a byte at a time held one of the few check slots for as long as it kept
    going (the socket's timeout bounds each read, not the body): with one slot, nobody else was answered."""
    from keras_operator.endpoints import webhook as server_module

    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT", 1.0)
    server.server.checks = threading.BoundedSemaphore(1)
    slow = client(server, certs[0])
    slow.putrequest("POST", PATH)
    slow.putheader("Content-Length", "1000")
    slow.endheaders()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                slow.send(b" ")
            except OSError:
                return
            time.sleep(0.2)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        time.sleep(0.3)  # the slow request holds the slot
        started = time.monotonic()
        status, body = post(client(server, certs[0]), json.dumps(request(training())).encode())
        assert status == 200
        assert body["response"]["allowed"] is True
        assert time.monotonic() - started < 5
        response = slow.getresponse()
        assert response.status == 408
        assert "error" in json.loads(response.read())
    finally:
        stop.set()
        feeder.join(5)
