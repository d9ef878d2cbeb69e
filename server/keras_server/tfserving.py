"""TensorFlow Serving's REST API: predict, classify, regress, model status and metadata."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from keras_server import codec, examples
from keras_server.bodies import parse_json
from keras_server.context import Context
from keras_server.model import TensorSpec
from keras_server.repository import Version
from keras_server.responses import json_response

# TF Serving's model paths: the model (latest version), a version by number, a version by label. A name
# never holds ':' (what follows it is the method) nor '/'.
V1_MODEL = "/v1/models/{name:[^/:]+}"
V1_PATHS = (V1_MODEL, V1_MODEL + "/versions/{version:[^/:]+}", V1_MODEL + "/labels/{label:[^/:]+}")


def version_status(version: Version) -> dict[str, Any]:
    failed = version.state == "END" and bool(version.error)
    return {
        "version": version.name,
        "state": version.state,
        "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": version.error if failed else ""},
    }


def decode(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], codec.TfsFormat]:
    return codec.parse_tfs(parse_json(body), specs)


def render(outputs: dict[str, np.ndarray], fmt: codec.TfsFormat) -> bytes:
    return orjson.dumps(codec.encode_tfs(outputs, fmt), option=orjson.OPT_SERIALIZE_NUMPY)


def decode_examples(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], None]:
    return examples.parse_examples(parse_json(body), specs), None


def render_result(task: examples.Task, outputs: dict[str, np.ndarray], _: None) -> bytes:
    return orjson.dumps(examples.result(task, outputs))


class TfServing:
    def __init__(self, context: Context) -> None:
        self.context = context

    def hot_routes(self) -> list[web.RouteDef]:
        """Tried first: aiohttp tries routes in order."""
        return [web.post(V1_MODEL + ":predict", self.predict)]

    def routes(self) -> list[web.RouteDef]:
        routes = []
        for path in V1_PATHS:
            if path != V1_MODEL:
                routes.append(web.post(path + ":predict", self.predict))
            routes += [
                web.post(path + ":classify", self.classify),
                web.post(path + ":regress", self.regress),
                web.get(path, self.status),
                web.get(path + "/metadata", self.metadata),
            ]
        return routes

    async def status(self, request: web.Request) -> web.Response:
        repository = self.context.repository
        one = self.context.named(request)
        listed = [one] if one is not None else [v for _, v in sorted(repository.versions.items(), reverse=True)]
        return json_response({"model_version_status": [version_status(v) for v in listed]})

    async def metadata(self, request: web.Request) -> web.Response:
        one = self.context.named(request)
        if one is None:
            one = self.context.repository.route(None, None)
        model = one.loaded()
        signature = {
            "inputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.inputs},
            "outputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.outputs},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response(
            {
                "model_spec": {"name": model.name, "signature_name": "", "version": one.name},
                "metadata": {
                    "signature_def": {"signature_def": {"serving_default": signature}},
                    **({"training_run": model.run} if model.run else {}),
                },
            }
        )

    async def predict(self, request: web.Request) -> web.Response:
        version = self.context.route(request)
        text = await self.context.answer(request, version, decode, render)
        return web.Response(body=text, content_type="application/json")

    async def answer_examples(self, request: web.Request, task: examples.Task) -> web.Response:
        """Classify and Regress: examples in, through the same batcher as predict."""
        version = self.context.route(request)
        if self.context.handler is not None:  # its postprocess decides what the outputs mean, not classify
            raise codec.RequestError(400, f":{task} is not served with a handler; use :predict")
        examples.check(task, version.loaded().outputs)  # before any work: a model that cannot is a 400
        text = await self.context.answer(request, version, decode_examples, functools.partial(render_result, task))
        return web.Response(body=text, content_type="application/json")

    async def classify(self, request: web.Request) -> web.Response:
        return await self.answer_examples(request, "classify")

    async def regress(self, request: web.Request) -> web.Response:
        return await self.answer_examples(request, "regress")
