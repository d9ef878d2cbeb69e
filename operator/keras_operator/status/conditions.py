"""metav1.Condition lists: set a condition, keep lastTransitionTime when the status does not change."""

from __future__ import annotations

import datetime
from typing import Any


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: Any) -> float | None:
    """A status timestamp (RFC 3339) as seconds since the epoch; None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def condition(type_: str, status: bool | str, reason: str, message: str = "") -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {"type": type_, "status": value, "reason": reason, "message": message}


def merge(
    previous: list[dict[str, Any]] | None, updates: list[dict[str, Any]], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """Apply `updates` onto `previous`; conditions not mentioned stay as they were."""
    by_type = {c["type"]: dict(c) for c in previous or []}
    for update in updates:
        old = by_type.get(update["type"])
        new = dict(update)
        same = old is not None and old.get("status") == new["status"]
        new["lastTransitionTime"] = old.get("lastTransitionTime", now) if same and old else now
        if generation is not None:
            new["observedGeneration"] = generation
        by_type[update["type"]] = new
    return list(by_type.values())


def get(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = get(conditions, type_)
    return found is not None and found.get("status") == "True"


def invalid_status(
    message: str,
    previous: dict[str, Any],
    generation: int | None,
    now: str,
    consequence: dict[str, Any],
    reason: str = "InvalidSpec",
) -> dict[str, Any]:
    """Phase Failed with Valid=False (reason InvalidSpec, or e.g. NameConflict); `consequence` is the kind's
    own condition for it."""
    status: dict[str, Any] = {"phase": "Failed", "message": message}
    if generation is not None:  # null is no generation: the one observed before still stands
        status["observedGeneration"] = generation
    status["conditions"] = merge(
        previous.get("conditions"), [condition("Valid", False, reason, message), consequence], generation, now
    )
    return status
