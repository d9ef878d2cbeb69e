"""The operator's own calls to the Kubernetes API (kopf does the watching and the status patches).

Every call maps API errors the same way: 404 -> None, 409 on create -> adopt the existing object,
400/403/422 -> Rejected (refused for good: reported on the resource, not retried), a 429 -> the same call
again after its Retry-After, anything else (5xx, timeouts, connection errors, a 429 throttled too long)
-> kopf.TemporaryError, retried with a growing delay.

The calls are plain HTTP on the event loop that awaits them (aiohttp), JSON dicts end to end: no worker
thread per call trading the GIL with the event loop, no model (de)serialisation. One `Api` per operator
run, made by main.py from the settings and the credentials found once (runtime/credentials.py), and handed
to whatever calls the API; it holds the run's session, its writes under way and whether the run lost the
Lease. A write, once started, is seen through even when the task awaiting it is cancelled (kopf cancels
the reconciles at shutdown), and `settle()` waits for the writes under way: the leader releases its Lease
only after they landed (keras_operator/main.py).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
import kopf
import structlog

from keras_common import __version__
from keras_operator.runtime.credentials import Credentials
from keras_operator.runtime.drift import covers

log = structlog.get_logger("keras_operator.kube")
RETRY_DELAY = 5.0
# The emulated API (tests, bench) tells the operator's requests from the fake controllers' by this prefix,
# and the API server records its first word as the manager of a write without a fieldManager.
USER_AGENT = f"keras-operator/{__version__}"
# Requests at once; more wait for a free connection. The thread pool this replaced had 16: a burst (the
# first sync of thousands of resources) queued behind it. An API server serves far more.
CONNECTIONS = 64

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "keras-operator"


class Rejected(Exception):
    """The API server refused a write for good: 422 (the object is invalid: the user's spec made it), 400
    (e.g. an admission webhook's denial) or 403 (RBAC, or a ResourceQuota exceeded). Retrying the same
    request cannot succeed, so it is reported, not retried."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code

    @property
    def reason(self) -> str:
        """The condition reason it becomes."""
        return {422: "InvalidSpec", 403: "Forbidden"}.get(self.code, "Rejected")


class Conflict(Exception):
    """A write conditioned on a resourceVersion lost: the object changed since it was read (HTTP 409)."""


class ApiError(Exception):
    """An answer the caller decides about: 404 (not there) or 409 (already there, or changed meanwhile)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status = status
        self.message = message


def owned(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether `uid` is among the object's owners."""
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


class NotLeading(kopf.TemporaryError):
    """A write asked for after this replica lost the Lease: another replica may be acting already."""


CONNECT_TIMEOUT_MAX = 10.0  # a TCP connect to a live API server takes milliseconds
TOKEN_RECHECK = 30.0
"""Seconds a token is used before the credentials are asked again (they fetch a new one only when it is
due): a thread hop twice a minute, not one per call, and well inside the 5 minutes before its expiry at
which the loaders renew a token."""
THROTTLED_ATTEMPTS = 4  # tries of a throttled call (429) before the reconcile is retried instead
THROTTLED_WAIT_MAX = 10.0  # a longer Retry-After is waited for by the work queue, not inside the call
EVENT_MESSAGE_MAX = 1024  # the API server refuses longer Event messages
REPORTER = "keras-operator"


def request_timeout(read: float) -> tuple[float, float]:
    """(connect, read) seconds for every call: without them, a call on a half-open connection holds its
    key for as long as the kernel keeps the socket."""
    return min(read, CONNECT_TIMEOUT_MAX), read


Answer = tuple[int, str, bytes, str | None]  # status, reason, body, Retry-After


@dataclass(eq=False)
class Writes:
    """One run's writes under way."""

    under_way: set[asyncio.Task[Answer]] = field(default_factory=set)
    abandoned: int = 0
    """Writes cancelled once started (only the loop's end or kopf's hung-task stop cancels one): whether
    they reach the API server is unknown."""

    def see_through(self, exchange: Coroutine[Any, Any, Answer]) -> asyncio.Future[Answer]:
        """Run a write in a task of its own, awaited shielded: a reconcile cancelled while its write is on
        the wire leaves the write to finish (its outcome known, its connection reusable) instead of cutting
        the connection with the request possibly applied already."""
        task = asyncio.get_running_loop().create_task(exchange)
        self.under_way.add(task)
        task.add_done_callback(self._ended)
        return asyncio.shield(task)

    def _ended(self, task: asyncio.Task[Answer]) -> None:
        self.under_way.discard(task)
        if task.cancelled():
            self.abandoned += 1

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds) for the writes under way. True when none is left and none was
        given up half-way; False means a write may still land."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.under_way:  # a write's retry after a 429 is a new task: wait until none is left
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self.under_way), timeout=left)
        return not self.abandoned


@dataclass(frozen=True)
class Request:
    """One call as it goes on the wire (sent again as it is after a 429)."""

    method: str
    url: str
    params: Mapping[str, str] | None
    data: bytes | None
    headers: Mapping[str, str]
    timeout: aiohttp.ClientTimeout
    server_name: str | None
    """The name the server's certificate must carry, when not the URL's host (kubeconfig tls-server-name)."""

    async def send(self, session: aiohttp.ClientSession) -> Answer:
        """The answer, read whole: the connection is back in the pool when this returns."""
        async with session.request(
            self.method,
            self.url,
            params=self.params,
            data=self.data,
            headers=self.headers,
            timeout=self.timeout,
            server_hostname=self.server_name,
        ) as resp:
            return resp.status, resp.reason or "", await resp.read(), resp.headers.get("Retry-After")


class Api:
    """The API server as one operator run reaches it: its session (made on the run's loop at the first
    call), its writes under way, its token, and whether the run lost the Lease (`lost`, set by main.py:
    from then on writes are refused)."""

    def __init__(
        self,
        credentials: Credentials,
        timeout: float,
        lost: threading.Event | None = None,
        token_recheck: float = TOKEN_RECHECK,
    ) -> None:
        self.credentials = credentials
        self.timeout = request_timeout(timeout)
        # Per socket operation, as urllib3's (connect, read) was: a large answer arriving steadily is not cut
        # off, a silent server is. No total: the work queue's liveness watches reconciles that take too long.
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout[0], sock_read=timeout)
        self.lost = lost if lost is not None else threading.Event()
        self.writes = Writes()
        self._token_recheck = token_recheck
        self._token: tuple[float, str | None] | None = None  # (when fetched, the header)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # --- the connection ---

    def _connection(self) -> aiohttp.ClientSession:
        if self._closed:
            # Closed by the shutdown's cleanup (main.py): nothing more is sent from this run.
            raise kopf.TemporaryError("the API client is closed: the operator is stopping", delay=RETRY_DELAY)
        if self._session is None:
            context = self.credentials.ssl_context()
            connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context if context is not None else True)
            headers = {"User-Agent": USER_AGENT, "Accept": JSON}
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        return self._session

    async def _authorization(self) -> str | None:
        if self.credentials.configuration is None:
            return None
        now = asyncio.get_running_loop().time()
        if self._token is None or now - self._token[0] >= self._token_recheck:
            # In a thread: renewing it may read a file or run an exec plugin.
            self._token = (now, await asyncio.to_thread(self.credentials.token))
        return self._token[1]

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds) for the writes under way. True when none is left and none was
        given up half-way; False means a write of this replica may still land."""
        return await self.writes.settle(timeout)

    async def close(self) -> None:
        """Close the session once its writes are done (each ends within its request timeout); a call made
        after fails as a temporary error."""
        await self.settle()
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> bytes:
        """The body of the API's 2xx answer to one call, errors mapped as the module's docstring says (404
        and 409 raised as ApiError, for the caller to decide)."""
        session = self._connection()
        headers: dict[str, str] = {}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        token = await self._authorization()
        if token:
            headers["Authorization"] = token
        url = self.credentials.host + path
        request = Request(method, url, params, data, headers, self._client_timeout, self.credentials.server_name)
        for attempt in range(1, THROTTLED_ATTEMPTS + 1):
            exchange = request.send(session)
            try:
                # A read cancelled half-way changes nothing: only writes are seen through.
                answer = await (exchange if method == "GET" else self.writes.see_through(exchange))
            except (aiohttp.ClientError, OSError) as exc:  # asyncio's TimeoutError is an OSError
                raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc!r}", delay=RETRY_DELAY) from exc
            status, reason, payload, retry_after = answer
            if status < 300:
                return payload
            if status == 401:
                self._token = None  # revoked or expired early: fetched again by the retry
            wait = _retry_after(status, retry_after)
            # A 429 was not processed, so the call may be sent again, but not before the server said: a retry
            # of the whole reconcile would come sooner (any watch event of the resource starts one).
            # client-go waits inside the call the same way.
            if wait is not None and wait <= THROTTLED_WAIT_MAX and attempt < THROTTLED_ATTEMPTS:
                await asyncio.sleep(wait)
                continue
            message = _api_message(payload, reason)
            if status in (400, 403, 422):
                raise Rejected(message, status)
            if status in (404, 409):
                raise ApiError(status, message)
            delay = max(RETRY_DELAY, wait or 0.0)
            raise kopf.TemporaryError(f"Kubernetes API error {status}: {message}", delay=delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return _object(await self._request("GET", path))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _still_leading(self, what: str) -> None:
        """Refuse a write once the Lease is lost. kopf stops at once, but reconciles under way run on to
        their end, and only status writes are conditioned on a resourceVersion: a create or apply made after
        the loss could race the new leader's."""
        if self.lost.is_set():
            raise NotLeading(f"not {what}: this replica lost the Lease", delay=60)

    # --- the calls ---

    async def create_or_adopt(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `obj`; when it exists already (a retry, a restart) return the existing one.
        -> (object, created)."""
        self._still_leading(f"creating {obj['kind']} {obj['metadata']['name']}")
        kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        path = _collection(kind, namespace)
        try:
            return _object(await self._request("POST", path, {"fieldManager": FIELD_MANAGER}, obj)), True
        except ApiError as exc:
            if exc.status != 409:
                raise kopf.TemporaryError(f"creating {kind} {name}: {exc.message}", delay=RETRY_DELAY) from exc
        existing = await self._get(f"{path}/{name}")
        if existing is None:  # deleted between our create and read: try again soon
            raise kopf.TemporaryError(f"{kind} {name} vanished while adopting it", delay=1)
        return existing, False

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A merge patch (strategic for the built-in kinds) of an object the operator owns; returns the
        object as patched."""
        self._still_leading(f"patching {kind} {name}")
        path = f"{_collection(kind, namespace)}/{name}"
        params = {"fieldManager": FIELD_MANAGER}
        return _object(await self._request("PATCH", path, params, body, _KINDS[kind][2]))

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"{_collection(kind, namespace)}/{name}")

    async def apply(
        self, obj: dict[str, Any], hash_annotation: str, owner_uid: str | None, current: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Server-side apply of `obj` under the operator's own field manager: fields removed from `obj`
        since the last apply disappear, fields someone else changed are set back, fields only others set
        (an HPA's replicas, a mutating webhook's sidecar) stay theirs. `current` is the object as a watch
        shows it (read when not given). An object that exists without `owner_uid` among its owners is never
        touched. -> (the object, "created" | "updated" | None), or (None, None) when it belongs to
        something else."""
        kind, meta = obj["kind"], obj["metadata"]
        self._still_leading(f"applying {kind} {meta['name']}")
        if current is None:
            current = await self.get(kind, meta["namespace"], meta["name"])
        if current is not None and not owned(current, owner_uid):
            return None, None
        # Apply only when the spec changed (its hash), or the object drifted from it: not once per resync.
        same_hash = (current or {}).get("metadata", {}).get("annotations", {}).get(hash_annotation) == (
            meta.get("annotations") or {}
        ).get(hash_annotation)
        if current is not None and same_hash and covers(current, {k: v for k, v in obj.items() if k != "status"}):
            return current, None
        # force: the operator's fields are the operator's, a hand edit of one is set back.
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        path = f"{_collection(kind, meta['namespace'])}/{meta['name']}"
        applied = _object(await self._request("PATCH", path, params, obj, APPLY))  # JSON is YAML
        return applied, "created" if current is None else "updated"

    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str | None) -> bool:
        """Delete the object if it exists and `owner_uid` owns it; True when something was deleted."""
        current = await self.get(kind, namespace, name)
        if current is None or not owned(current, owner_uid):
            return False
        return await self.delete(kind, namespace, name)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete if present, and what it owns in the background (a Job's default would orphan its pods);
        True when something was deleted."""
        self._still_leading(f"deleting {kind} {name}")
        path = f"{_collection(kind, namespace)}/{name}"
        try:
            await self._request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def get_custom(self, resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """One of our custom resources ((group, version, plural)); None when there is none."""
        return await self._get(f"{_custom(resource, namespace)}/{name}")

    async def find_custom(self, resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """One of our custom resources by name, read with a list narrowed to that name: the operator may
        list and watch its KerasModelServices, not get them (RBAC). None when there is none."""
        params = {"fieldSelector": f"metadata.name={name}"}
        found = await self._request("GET", _custom(resource, namespace), params)
        # Filtered here too: a proxy or an old API server may ignore the selector.
        items = json.loads(found).get("items") or []
        return next((dict(i) for i in items if (i.get("metadata") or {}).get("name") == name), None)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        params = {"labelSelector": selector}
        found = await self._request("GET", f"/api/v1/namespaces/{namespace}/pods", params)
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        # Filter here too: a proxy or an old API server may ignore the selector.
        return [
            p
            for p in json.loads(found).get("items", [])
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str | None:
        """GET a pod's HTTP endpoint through the API server's pod proxy (no direct network path needed)."""
        try:
            return _text(await self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path}"))
        except (ApiError, Rejected, kopf.TemporaryError):
            return None

    async def pod_log_tail(self, namespace: str, pod_name: str, container: str, lines: int = 200) -> str | None:
        """The last lines of the log of the pod's `container` (named always: a pod with an injected sidecar
        has two, and the API server then refuses a request without one); None when it cannot be read now
        (not started, rotated, gone)."""
        params = {"container": container, "tailLines": str(lines)}
        try:
            return _text(await self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}/log", params))
        except (ApiError, Rejected, kopf.TemporaryError):
            return None

    async def patch_status(
        self,
        resource: tuple[str, str, str],
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        """A merge patch of a custom resource's status subresource (lists, e.g. conditions, are replaced
        whole), refused with Conflict when `resource_version` is given and the object has moved on.
        -> the resourceVersion it made, None when the resource is gone."""
        self._still_leading(f"writing the status of {name}")
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = f"{_custom(resource, namespace)}/{name}/status"
        try:
            patched = await self._request("PATCH", path, {"fieldManager": FIELD_MANAGER}, body, MERGE_PATCH)
        except ApiError as exc:
            if exc.status == 409:
                raise Conflict(exc.message) from exc
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
            return None
        return str(json.loads(patched).get("metadata", {}).get("resourceVersion") or "") or None

    async def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj`, as `kubectl describe` shows them. Best effort: an Event that cannot
        be posted is logged, never fails the reconcile. Posted here rather than through kopf.event, which
        works only inside kopf's own per-object tasks (a reconcile started by a resync or a push is not
        one)."""
        if self.lost.is_set():
            return  # said by the replica that leads now, if it still holds
        meta = obj["metadata"]
        body = event_body(obj, type_, reason, message)
        try:
            # The answer is not decoded: nothing in it is needed (it is read, to free the connection).
            path = f"/api/v1/namespaces/{meta['namespace']}/events"
            await self._request("POST", path, {"fieldManager": FIELD_MANAGER}, body)
        except (ApiError, Rejected, kopf.TemporaryError) as exc:
            log.warning("event_not_posted", reason=reason, name=meta["name"], error=str(exc))

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        """The API server's verdict on a bearer token for our own audience: the TokenReview's status."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        reviewed = await self._request("POST", path, {"fieldManager": FIELD_MANAGER}, body)
        return dict(json.loads(reviewed).get("status") or {})


def event_body(obj: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """The Event `post_event` posts."""
    meta = obj["metadata"]
    if len(message) > EVENT_MESSAGE_MAX:
        message = message[: EVENT_MESSAGE_MAX - 3] + "..."
    now = datetime.datetime.now(tz=datetime.UTC).isoformat()
    body = {
        "metadata": {"namespace": meta["namespace"], "generateName": f"{meta['name']}."},
        "type": type_,
        "reason": reason,
        "message": message,
        "action": reason,
        "reportingComponent": REPORTER,
        "reportingInstance": REPORTER,
        "source": {"component": REPORTER},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": now,
        "count": 1,
    }
    return body


def _retry_after(status: int, header: str | None) -> float | None:
    """Seconds a 429's Retry-After header asks for; None for any other error, or without the header."""
    if status != 429:
        return None
    try:
        return max(0.0, float(header or ""))
    except ValueError:
        return None


def _api_message(payload: bytes, reason: str) -> str:
    try:
        return str(json.loads(payload or b"{}").get("message") or reason)
    except (ValueError, AttributeError):
        return reason


def _object(payload: bytes) -> dict[str, Any]:
    return dict(json.loads(payload))


# kind -> (API path prefix, plural, patch type) of the kinds the operator owns. The built-in kinds take
# strategic merge patches (what the kubernetes client sent for a dict); a custom resource takes JSON merge.
_KINDS: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {
        "Job": ("/apis/batch/v1", "jobs", STRATEGIC_PATCH),
        "ConfigMap": ("/api/v1", "configmaps", STRATEGIC_PATCH),
        "Service": ("/api/v1", "services", STRATEGIC_PATCH),
        "Deployment": ("/apis/apps/v1", "deployments", STRATEGIC_PATCH),
        "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers", STRATEGIC_PATCH),
        "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes", MERGE_PATCH),
    }
)


def _collection(kind: str, namespace: str) -> str:
    prefix, plural, _ = _KINDS[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}"


def _custom(resource: tuple[str, str, str], namespace: str) -> str:
    group, version, plural = resource
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"


def _text(payload: bytes) -> str:
    """A text body as sent (a log, a metrics page), whatever its encoding claims."""
    return payload.decode(errors="replace")
