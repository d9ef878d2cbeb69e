"""Progress reports as a trainer pushes them to the operator's endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def post(url: str, token: str | None, body: Any) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON with a bearer token (none: no Authorization header). -> (status, JSON answer)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
