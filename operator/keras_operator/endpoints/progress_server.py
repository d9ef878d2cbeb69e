"""The endpoint trainers push their progress to: POST /v1/namespaces/NS/kerastrainingjobs/NAME/progress.

HTTPS when the operator has a certificate (KERAS_OPERATOR_PROGRESS_CERT_DIR), plain HTTP otherwise.
Every answer is JSON; every refusal says why: 401 without a valid token, 403 when the token's pod is
not one of the pods of this resource's own Job, 400 for a body that is not a report, 503 while the operator starts.

It knows the trainings through `Reports` (the training kind's object, handed in by main.py), never a global.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any, Protocol

import kopf
import structlog
from aiohttp import web
from pydantic import ValidationError

from keras_operator.api.report import EpochReport, TrainingResult
from keras_operator.controllers.progress_auth import Authenticator, may_report
from keras_operator.runtime import kube
from keras_operator.runtime.kube import Api
from keras_operator.runtime.settings import Settings

MAX_BODY = 64 * 1024  # an epoch report is a few hundred bytes
PATH = "/v1/namespaces/{namespace}/kerastrainingjobs/{name}/progress"
log = structlog.get_logger("keras_operator.progress")


Key = tuple[str, str]  # (namespace, KerasTrainingJob name)


class Reports(Protocol):
    """What the endpoint needs of the trainings (handlers/training_handlers.py's `Training`)."""

    @property
    def started(self) -> bool:
        """Whether kopf has filled the indexes (before that, nobody can be told apart)."""
        ...

    def reporters(self, key: Key) -> tuple[str | None, list[dict[str, Any]]]:
        """(the resource's uid, the pods that may report for it)."""
        ...

    def report_pushed(self, key: Key, uid: str, report: EpochReport, newer_only: bool = False) -> None: ...


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _report(body: Any) -> tuple[EpochReport, bool]:
    """An epoch report or a final result, as the trainer sends them (both end up as the latest epoch).
    -> (report, whether it is only a result: its epoch adds nothing to the same epoch's own report)"""
    if not isinstance(body, dict) or body.get("type") not in ("epoch", "result"):
        raise ValueError('the body must be a JSON object with "type": "epoch" or "result"')
    fields = {k: v for k, v in body.items() if k != "type"}
    if body["type"] == "epoch":
        return EpochReport.model_validate(fields), False
    result = TrainingResult.model_validate(fields)
    return EpochReport(epoch=result.epoch, epochs=result.epochs, metrics=result.metrics or {}), True


def _ssl_context(cert_dir: str | None) -> ssl.SSLContext | None:
    if not cert_dir:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(cert_dir) / "tls.crt", Path(cert_dir) / "tls.key")
    return context


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors of the HTTP layer itself (unknown path, wrong method, body too large) in JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)


class ProgressEndpoint:
    """The endpoint of one operator run: started by kopf's startup, closed at its cleanup (main.py)."""

    def __init__(self, reports: Reports, settings: Settings, api: Api) -> None:
        self.reports = reports
        self.settings = settings
        self.authenticator = Authenticator(api)
        self._runner: web.AppRunner | None = None

    async def receive(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "a bearer token is required", **{"WWW-Authenticate": "Bearer"})
        if not self.reports.started:
            return _error(503, "the operator is starting", **{"Retry-After": "5"})
        try:
            identity = await self.authenticator.identify(token.strip())
        except kopf.TemporaryError as exc:  # the API server cannot review tokens right now
            return _error(503, f"cannot check the token now: {exc}", **{"Retry-After": "5"})
        except kube.Rejected as exc:
            # 403: the operator may not create TokenReviews (its RBAC), not the trainer's fault, and it may be
            # fixed without the trainer knowing: a 5xx it retries. 400: the server could not review this token.
            if exc.code == 400:
                return _error(401, f"the token could not be reviewed: {exc}", **{"WWW-Authenticate": "Bearer"})
            log.error("token_review_refused", code=exc.code, error=str(exc))
            return _error(503, f"the operator may not review tokens: {exc}", **{"Retry-After": "30"})
        if identity is None:
            return _error(401, "the token is not valid for this endpoint", **{"WWW-Authenticate": "Bearer"})
        uid, pods = self.reports.reporters((namespace, name))
        if uid is None or not may_report(identity, namespace, pods):
            log.warning(
                "progress_refused", namespace=namespace, name=name, pod=identity.pod, pod_namespace=identity.namespace
            )
            return _error(
                403, f"pod {identity.namespace}/{identity.pod} is not a pod of KerasTrainingJob {namespace}/{name}"
            )
        try:
            report, final = _report(json.loads(await request.read()))
        except (ValueError, ValidationError) as exc:
            return _error(400, f"not a progress report: {str(exc).splitlines()[0]}")
        self.reports.report_pushed((namespace, name), uid, report, newer_only=final)
        return web.json_response({}, status=202)

    async def start(self) -> None:
        settings = self.settings
        if not settings.progress_port:
            return
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors])
        app.router.add_post(PATH, self.receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = _ssl_context(settings.progress_cert_dir)
        try:
            await web.TCPSite(
                self._runner, settings.progress_address, settings.progress_port, ssl_context=context
            ).start()
        except OSError as exc:  # a port taken is a setting to fix: stop with why, not retry every minute
            raise kopf.PermanentError(
                f"the progress endpoint cannot listen on {settings.progress_address}:{settings.progress_port}: "
                f"{exc} (KERAS_OPERATOR_PROGRESS_PORT; 0 turns the endpoint off)"
            ) from exc
        log.info("progress_endpoint_started", port=settings.progress_port, tls=context is not None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
