"""Who may report progress for which KerasTrainingJob.

A trainer proves who it is with a projected service-account token whose audience is the operator's own
(it opens nothing on the API server). The API server's TokenReview says which pod holds it; the pod
must be one of the resource's own pods, as the operator's pod watch shows them: owned by the Job the
resource owns (by uid), not merely labelled with its name (anyone who may create pods can label one, and
a deleted run's pods keep their labels while they are collected). Verdicts are cached
per token until it expires (at most a few minutes): one TokenReview per token, not one per epoch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from keras_operator.api.wire import PROGRESS_AUDIENCE, TOKEN_POD_NAME, TOKEN_POD_UID
from keras_operator.runtime.kube import Api

CACHE_SECONDS = 300.0
CACHE_MAX = 50_000


@dataclass(frozen=True)
class Identity:
    namespace: str
    pod: str
    pod_uid: str


def identity_of(review: dict[str, Any]) -> Identity | None:
    """The pod a TokenReview status vouches for; None unless it authenticated a pod-bound token for us."""
    if not review.get("authenticated") or PROGRESS_AUDIENCE not in (review.get("audiences") or []):
        return None
    user = review.get("user") or {}
    parts = str(user.get("username") or "").split(":")
    extra = user.get("extra") or {}
    pod, uid = (extra.get(TOKEN_POD_NAME) or [None])[0], (extra.get(TOKEN_POD_UID) or [None])[0]
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not pod or not uid:
        return None
    return Identity(namespace=parts[2], pod=str(pod), pod_uid=str(uid))


def _expiry(token: str) -> float | None:
    """The token's own `exp`, read without checking the signature: only to bound the cache, after the
    API server has said the token is good."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class Authenticator:
    def __init__(self, api: Api) -> None:
        self.api = api
        self._cache: OrderedDict[str, tuple[Identity | None, float]] = OrderedDict()

    async def identify(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        identity = identity_of(await self.api.token_review(token, PROGRESS_AUDIENCE))
        expires = _expiry(token) if identity is not None else None
        # Refusals are cached briefly too: a flood of one bad token costs one review per interval.
        until = min(now + CACHE_SECONDS, expires) if expires is not None else now + (CACHE_SECONDS if identity else 10)
        self._cache[key] = (identity, until)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return identity

    def clear(self) -> None:
        self._cache.clear()


def may_report(identity: Identity, namespace: str, pods: list[dict[str, Any]]) -> bool:
    """Only a pod of this resource, in its namespace, the very pod (same uid) the token was made for.
    `pods`: the pods of the resource's own Job (the caller proves the owner chain)."""
    return identity.namespace == namespace and any(
        p["metadata"].get("name") == identity.pod and p["metadata"].get("uid") == identity.pod_uid for p in pods
    )
