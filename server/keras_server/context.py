"""What the routes of both protocols share: the repository, the configuration, the bodies, and the
steps every model request takes (which version it goes to, the model call within the limits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from aiohttp import web

from keras_server import codec
from keras_server.access_log import ROUTED
from keras_server.batching import Arrival
from keras_server.bodies import Bodies, output_bytes
from keras_server.config import ServerConfig
from keras_server.handler import Handler
from keras_server.model import ServedModel, TensorSpec
from keras_server.repository import Repository, Version

Parsed = TypeVar("Parsed")
Encoded = TypeVar("Encoded")


@dataclass(frozen=True)
class Context:
    repository: Repository
    config: ServerConfig
    bodies: Bodies
    handler: Handler | None = None  # --handler: request values go to its preprocess, not to the model

    def request_specs(self, model: ServedModel) -> list[TensorSpec]:
        """What a request to `model` must carry."""
        handler = self.handler
        return model.inputs if handler is None else handler.request_specs(model.inputs)

    def check_name(self, request: web.Request) -> None:
        name = request.match_info["name"]
        if name != self.repository.name:
            raise codec.RequestError(404, f"model {name!r} not found; this server serves {self.repository.name!r}")

    def route(self, request: web.Request) -> Version:
        """The available version the request goes to. The caller announces the request to its batcher
        before any await: from then on the version stays loaded until the request is answered."""
        self.check_name(request)
        info = request.match_info
        version = self.repository.route(info.get("version"), info.get("label"))
        request[ROUTED] = version.name
        return version

    def named(self, request: web.Request) -> Version | None:
        """The version a status or metadata request names, in any state; None: the model as a whole."""
        self.check_name(request)
        info = request.match_info
        version, label = info.get("version"), info.get("label")
        return None if version is None and label is None else self.repository.find(version, label)

    async def run(self, version: Version, arrival: Arrival, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `inputs`, through the version's batcher."""
        version.loaded()
        limit = self.config.max_rows_per_request
        if limit is not None:
            rows = next(iter(inputs.values())).shape[0]
            if rows > limit:
                raise codec.RequestError(400, f"the request has {rows} rows; this server takes {limit} rows at most")
        return await arrival.submit(inputs)

    async def answer(
        self,
        request: web.Request,
        version: Version,
        decode: Callable[[bytes, list[TensorSpec]], tuple[dict[str, np.ndarray], Parsed]],
        encode: Callable[[dict[str, np.ndarray], Parsed], Encoded],
    ) -> Encoded:
        """A model request from body to answer: the body read within the budget, `decode`d to (inputs,
        what else the answer needs), the model called, its outputs `encode`d; decoding and encoding off
        the loop when big. `version` (from route()) stays loaded until the answer is encoded."""
        bodies = self.bodies
        arrival = version.batcher.arrive()  # type: ignore[union-attr]  # an available version has one
        try:
            body = await bodies.read(request, arrival)
            inputs, parsed = await bodies.off_loop(len(body), decode, body, self.request_specs(version.loaded()))
            outputs = await self.run(version, arrival, inputs)
            return await bodies.off_loop(output_bytes(outputs), encode, outputs, parsed)
        finally:
            arrival.leave()
