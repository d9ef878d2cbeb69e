"""Service-account tokens as the API server issues (TokenRequest, for the kubelet's projected volumes)
and reviews them (TokenReview), emulated.

Tokens look like the real ones: JWTs (header.payload.signature, base64url) whose payload has `iss`,
`aud`, `exp`, `iat`, `nbf`, `jti`, `sub` (system:serviceaccount:NS:SA) and `kubernetes.io` (namespace,
pod name and uid, service account name and uid). They are signed with HMAC-SHA256 under a random key
of this issuer: only the emulator validates them. A review answers as the API server does: the user
(username, uid, groups, and the bound pod in `extra`) and the audiences the token is valid for among
those asked (the API server's own audience when none are asked); `authenticated: false` with an
`error` for a token that is malformed, forged, unknown, expired, revoked, for other audiences, or
whose pod is gone (or was replaced by another of the same name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # also the issuer, as on most clusters
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def service_account_uid(namespace: str, name: str) -> str:
    """A stable uid for a service account the emulator does not store."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"serviceaccount:{namespace}/{name}"))


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a token, unverified (for tests to look at what the kubelet was given)."""
    return dict(json.loads(_unb64(token.split(".")[1])))


@attrs.define
class IssuedToken:
    token: str
    namespace: str
    pod: str
    pod_uid: str
    service_account: str
    audiences: list[str]
    expires: float  # time.time() seconds; expire() moves it
    jti: str
    revoked: bool = False

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


# (namespace, pod name) -> the uid of that pod if it exists, else None
PodLookup = Callable[[str, str], str | None]


@attrs.define
class TokenIssuer:
    key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    issued: dict[str, IssuedToken] = attrs.field(factory=dict)  # by jti
    clock: Callable[[], float] = time.time

    def _sign(self, claims: dict[str, Any], key: bytes) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "kmock-emulator"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def _claims(
        self, namespace: str, pod: str, uid: str, audiences: list[str], ttl: float, service_account: str
    ) -> dict[str, Any]:
        now = int(self.clock())
        return {
            "iss": API_AUDIENCE,
            "aud": audiences,
            "exp": now + int(ttl),
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": uid},
                "serviceaccount": {"name": service_account, "uid": service_account_uid(namespace, service_account)},
            },
        }

    def mint(
        self,
        namespace: str,
        pod: str,
        uid: str,
        audience: str | Iterable[str] = API_AUDIENCE,
        ttl: float = 3600,
        service_account: str = "default",
    ) -> str:
        """A token bound to the pod, valid for `ttl` seconds (0 or less: already expired)."""
        audiences = [audience] if isinstance(audience, str) else list(audience)
        claims = self._claims(namespace, pod, uid, audiences, ttl, service_account)
        token = self._sign(claims, self.key)
        self.issued[claims["jti"]] = IssuedToken(
            token=token,
            namespace=namespace,
            pod=pod,
            pod_uid=uid,
            service_account=service_account,
            audiences=audiences,
            expires=self.clock() + ttl,
            jti=claims["jti"],
        )
        return token

    def forge(
        self,
        namespace: str,
        pod: str,
        uid: str,
        audience: str | Iterable[str] = API_AUDIENCE,
        ttl: float = 3600,
        service_account: str = "default",
    ) -> str:
        """A token with the same claims a real one would have, signed by someone else's key."""
        audiences = [audience] if isinstance(audience, str) else list(audience)
        return self._sign(self._claims(namespace, pod, uid, audiences, ttl, service_account), secrets.token_bytes(32))

    def find(self, token: str) -> IssuedToken | None:
        try:
            return self.issued.get(str(token_claims(token).get("jti")))
        except (ValueError, IndexError, TypeError):
            return None

    def expire(self, token: str) -> None:
        self._record(token).expires = self.clock() - 1

    def revoke(self, token: str) -> None:
        self._record(token).revoked = True

    def _record(self, token: str) -> IssuedToken:
        record = self.find(token)
        if record is None or record.token != token:
            raise KeyError("not a token this emulator minted")
        return record

    def review(self, token: str, audiences: list[str] | None = None, pods: PodLookup | None = None) -> dict[str, Any]:
        """The `status` of a TokenReview of `token` for `audiences`."""
        wanted = list(audiences or [API_AUDIENCE])
        record, error = self._verify(token)
        if record is None:
            return {"authenticated": False, "user": {}, "error": f"[invalid bearer token, {error}]"}
        valid_for = [a for a in wanted if a in record.audiences]
        if not valid_for:
            return {
                "authenticated": False,
                "user": {},
                "error": f"[invalid bearer token, token audiences {json.dumps(record.audiences)} is invalid "
                f"for the target audiences {json.dumps(wanted)}]",
            }
        if pods is not None:
            current_uid = pods(record.namespace, record.pod)
            if current_uid is None:
                error = f'pod "{record.pod}" not found'
            elif current_uid != record.pod_uid:
                error = f'pod "{record.pod}" UID ({current_uid}) does not match the token ({record.pod_uid})'
            if current_uid != record.pod_uid:
                return {
                    "authenticated": False,
                    "user": {},
                    "error": f"[invalid bearer token, service account token has been invalidated: {error}]",
                }
        return {
            "authenticated": True,
            "user": {
                "username": record.username,
                "uid": service_account_uid(record.namespace, record.service_account),
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{record.namespace}",
                    "system:authenticated",
                ],
                "extra": {
                    POD_NAME_KEY: [record.pod],
                    POD_UID_KEY: [record.pod_uid],
                    CREDENTIAL_ID_KEY: [f"JTI={record.jti}"],
                },
            },
            "audiences": valid_for,
        }

    def _verify(self, token: str) -> tuple[IssuedToken | None, str]:
        parts = token.split(".")
        if len(parts) != 3:
            return None, "token is not a JWT"
        try:
            header = json.loads(_unb64(parts[0]))
            signature = _unb64(parts[2])
        except (ValueError, TypeError):
            return None, "token is not a JWT"
        if header.get("alg") != "HS256":
            return None, f"unsupported signing algorithm {header.get('alg')!r}"
        expected = hmac.new(self.key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            return None, "error in cryptographic primitive: token signature is invalid"
        record = self.find(token)
        if record is None or record.token != token:
            return None, "token lookup failed"
        if self.clock() >= record.expires:
            return None, "service account token has expired"
        if record.revoked:
            return None, "service account token has been invalidated"
        return record, ""
