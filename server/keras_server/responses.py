"""Answers as JSON, errors included ({"error": message})."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(data: Any, status: int = 200) -> web.Response:
    # orjson writes numpy arrays itself: the outputs of a batch never become Python lists.
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)
