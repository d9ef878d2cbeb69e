"""The Open Inference Protocol v2 (KServe): server and model metadata, infer (JSON and binary tensors)."""

from __future__ import annotations

import functools

import numpy as np
import orjson
from aiohttp import web

from keras_common import __version__
from keras_server import codec
from keras_server.bodies import parse_json
from keras_server.context import Context
from keras_server.model import TensorSpec
from keras_server.responses import json_response


def decode(
    header_length: str | None, body: bytes, specs: list[TensorSpec]
) -> tuple[dict[str, np.ndarray], codec.V2Request]:
    header, binary = codec.split_binary(body, header_length)
    parsed = codec.parse_v2(parse_json(header), specs, binary)
    return parsed.inputs, parsed


def render(model: str, version: str, outputs: dict[str, np.ndarray], parsed: codec.V2Request) -> tuple[bytes, bytes]:
    response, section = codec.encode_v2(outputs, model, version, parsed)
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), section


class InferenceV2:
    def __init__(self, context: Context) -> None:
        self.context = context

    def hot_routes(self) -> list[web.RouteDef]:
        """Tried first: aiohttp tries routes in order."""
        return [web.post("/v2/models/{name}/infer", self.infer)]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/{name}", self.model_metadata),
            web.get("/v2/models/{name}/versions/{version}", self.model_metadata),
            web.post("/v2/models/{name}/versions/{version}/infer", self.infer),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response(
            {"name": "keras-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        repository = self.context.repository
        one = self.context.named(request)
        if one is None:
            one = repository.route(None, None)
        model = one.loaded()
        return json_response(
            {
                "name": repository.name,
                "versions": [v.name for v in repository.available()],
                "platform": "keras",
                "inputs": [codec.v2_tensor_metadata(s) for s in model.inputs],
                "outputs": [codec.v2_tensor_metadata(s) for s in model.outputs],
                **({"parameters": {"training_run": model.run}} if model.run else {}),
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        version = self.context.route(request)
        header_length = request.headers.get(codec.BINARY_HEADER)
        text, section = await self.context.answer(
            request,
            version,
            functools.partial(decode, header_length),
            functools.partial(render, self.context.repository.name, version.name),
        )
        if not section:
            return web.Response(body=text, content_type="application/json")
        return web.Response(
            body=text + section, content_type="application/octet-stream", headers={codec.BINARY_HEADER: str(len(text))}
        )
