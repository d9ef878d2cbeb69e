"""What a reconcile decides for one resource, whatever its kind: the status to write and the Events to post.

Low enough for the status modules (a canary's step carries its Events) and the controllers alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until the resource needs another look that no watch event will bring (a TTL to honour)."""
