"""Liveness and readiness, of the server and of a model version (the Open Inference v2 paths)."""

from __future__ import annotations

from aiohttp import web

from keras_server.context import Context
from keras_server.responses import json_response


class Health:
    def __init__(self, context: Context) -> None:
        self.context = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/{name}/ready", self.model_ready),
            web.get("/v2/models/{name}/versions/{version}/ready", self.model_ready),
        ]

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.context.repository.ready
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        repository = self.context.repository
        one = self.context.named(request)
        if one is None:
            is_ready = repository.ready
        else:
            is_ready = (
                not repository.draining and one.state == "AVAILABLE" and one.model is not None and one.model.ready
            )
        return json_response({"name": repository.name, "ready": is_ready}, status=200 if is_ready else 503)
