"""The operator's own calls to the Kubernetes API (kopf does the watching and the status patches).

Every call maps API errors the same way: 404 -> None, 409 on create -> adopt the existing
object, 400/403/422 -> Rejected (refused for good: reported on the resource, not retried), a 429 -> the
same call again after its Retry-After, anything else (5xx, timeouts, connection errors, a 429 throttled
too long) -> kopf.TemporaryError, retried with a growing delay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
import kubernetes
import structlog
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, ReadTimeoutError
from urllib3.util.retry import Retry

from keras_operator.runtime import lifecycle, quantity
from keras_operator.runtime.settings import api_server, api_timeout

log = structlog.get_logger("keras_operator.kube")
T = TypeVar("T")
A = TypeVar("A")
RETRY_DELAY = 5.0
# The kubernetes client blocks, so each call takes a thread. asyncio's default pool (cores + 4 threads:
# 6 on 2 cores) queued Job creates, status writes and Events behind each other at fleet scale; the
# client's connection pool is sized to match, or the extra threads would open a connection per call.
API_THREADS = 16


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


@functools.lru_cache(maxsize=4)
def _api_client(api_server: str | None) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    if api_server:
        config.host = api_server
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = API_THREADS
    config.retries = _NoRetryOnTimeout(3)
    return kubernetes.client.ApiClient(config)


class _NoRetryOnTimeout(Retry):
    """urllib3's default retries, except after a read timeout: urllib3 would send a GET that timed out
    again (three times), making one call's timeout four; the work queue retries it instead."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        error = kwargs.get("error") if len(args) < 4 else args[3]
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(*args, **kwargs)


_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube")
    return _executor


def api_client() -> kubernetes.client.ApiClient:
    # Not Settings.from_env(): this runs on every API call, and the whole settings cost a hostname lookup.
    return _api_client(api_server())


def _read_through(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    result = fn(*args, **kwargs)
    if kwargs.get("_preload_content") is False:
        # Read here, in the worker thread, so the connection is back in the pool before the thread takes its
        # next call. Read later on the event loop, a burst (the first sync) had more responses holding
        # connections than the pool keeps: urllib3 opened extra ones, then discarded them with a warning
        # ("Connection pool is full, discarding connection"). The body stays cached on the response.
        result.data  # type: ignore[attr-defined]  # noqa: B018
    return result


CONNECT_TIMEOUT_MAX = 10.0  # a TCP connect to a live API server takes milliseconds


def request_timeout() -> tuple[float, float]:
    """(connect, read) seconds for every call: without them, a call on a half-open connection holds its
    key, and a thread of the pool, for as long as the kernel keeps the socket."""
    read = api_timeout()
    return min(read, CONNECT_TIMEOUT_MAX), read


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    kwargs.setdefault("_request_timeout", request_timeout())
    call = functools.partial(_read_through, fn, *args, **kwargs)
    for attempt in range(1, THROTTLED_ATTEMPTS + 1):
        try:
            return await asyncio.get_running_loop().run_in_executor(_threads(), call)
        except ApiException as exc:
            wait = _retry_after(exc)
            # A 429 was not processed, so the call may be sent again, but not before the server said: a
            # retry of the whole reconcile would come sooner (any watch event of the resource starts one).
            # client-go waits inside the call the same way.
            if wait is not None and wait <= THROTTLED_WAIT_MAX and attempt < THROTTLED_ATTEMPTS:
                await asyncio.sleep(wait)
                continue
            if exc.status in (400, 403, 422):
                raise Rejected(_api_message(exc), exc.status) from exc
            if exc.status in (404, 409):
                raise
            message = f"Kubernetes API error {exc.status}: {_api_message(exc)}"
            raise kopf.TemporaryError(message, delay=max(RETRY_DELAY, wait or 0.0)) from exc
        except (HTTPError, OSError) as exc:
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc}", delay=RETRY_DELAY) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


THROTTLED_ATTEMPTS = 4  # tries of a throttled call (429) before the reconcile is retried instead
THROTTLED_WAIT_MAX = 10.0  # a longer Retry-After is waited for by the work queue, not inside the call


def _retry_after(exc: ApiException) -> float | None:
    """Seconds a 429's Retry-After header asks for; None for any other error, or without the header."""
    if exc.status != 429:
        return None
    try:
        return max(0.0, float((exc.headers or {}).get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


@functools.lru_cache(maxsize=16)
def _api_on(cls: type[A], client: kubernetes.client.ApiClient) -> A:
    # One API object per client, not one per call: the operator makes several calls per resource.
    return cls(client)


def _core() -> kubernetes.client.CoreV1Api:
    return _api_on(kubernetes.client.CoreV1Api, api_client())


def _batch() -> kubernetes.client.BatchV1Api:
    return _api_on(kubernetes.client.BatchV1Api, api_client())


def _apps() -> kubernetes.client.AppsV1Api:
    return _api_on(kubernetes.client.AppsV1Api, api_client())


def _autoscaling() -> kubernetes.client.AutoscalingV2Api:
    return _api_on(kubernetes.client.AutoscalingV2Api, api_client())


Calls = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]


def _custom_calls(group: str, version: str, plural: str) -> Calls:
    """(create, read, patch, delete) of a custom resource, with the typed APIs' argument order."""
    api = _api_on(kubernetes.client.CustomObjectsApi, api_client())

    def create(namespace: str, body: Any, **kw: Any) -> Any:
        return api.create_namespaced_custom_object(group, version, namespace, plural, body, **kw)

    def read(name: str, namespace: str, **kw: Any) -> Any:
        return api.get_namespaced_custom_object(group, version, namespace, plural, name, **kw)

    def patch(name: str, namespace: str, body: Any, **kw: Any) -> Any:
        return api.patch_namespaced_custom_object(group, version, namespace, plural, name, body, **kw)

    def delete(name: str, namespace: str, **kw: Any) -> Any:
        return api.delete_namespaced_custom_object(group, version, namespace, plural, name, **kw)

    return create, read, patch, delete


def _calls(kind: str) -> Calls:
    """(create, read, patch, delete) for each kind the operator owns."""
    if kind == "HTTPRoute":
        return _custom_calls("gateway.networking.k8s.io", "v1", "httproutes")
    core, batch, apps, hpa = _core(), _batch(), _apps(), _autoscaling()
    return {
        "Job": (
            batch.create_namespaced_job,
            batch.read_namespaced_job,
            batch.patch_namespaced_job,
            batch.delete_namespaced_job,
        ),
        "ConfigMap": (
            core.create_namespaced_config_map,
            core.read_namespaced_config_map,
            core.patch_namespaced_config_map,
            core.delete_namespaced_config_map,
        ),
        "Service": (
            core.create_namespaced_service,
            core.read_namespaced_service,
            core.patch_namespaced_service,
            core.delete_namespaced_service,
        ),
        "Deployment": (
            apps.create_namespaced_deployment,
            apps.read_namespaced_deployment,
            apps.patch_namespaced_deployment,
            apps.delete_namespaced_deployment,
        ),
        "HorizontalPodAutoscaler": (
            hpa.create_namespaced_horizontal_pod_autoscaler,
            hpa.read_namespaced_horizontal_pod_autoscaler,
            hpa.patch_namespaced_horizontal_pod_autoscaler,
            hpa.delete_namespaced_horizontal_pod_autoscaler,
        ),
    }[kind]


async def _get(fn: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = await _call(fn, name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(json.loads(obj.data))


class NotLeading(kopf.TemporaryError):
    """A write asked for after this replica lost the Lease: another replica may be acting already."""


def _still_leading(what: str) -> None:
    """Refuse a write once the Lease is lost. kopf stops at once, but reconciles under way run on to their
    end, and only status writes are conditioned on a resourceVersion: a create or apply made after the
    loss could race the new leader's."""
    if lifecycle.LOST.is_set():
        raise NotLeading(f"not {what}: this replica lost the Lease", delay=60)


async def create_or_adopt(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create `obj`; when it exists already (a retry, a restart) return the existing one. -> (object, created)."""
    _still_leading(f"creating {obj['kind']} {obj['metadata']['name']}")
    kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    create, read, _, _ = _calls(kind)
    try:
        resp = await _call(create, namespace, obj, field_manager=FIELD_MANAGER, _preload_content=False)
        return dict(json.loads(resp.data)), True
    except ApiException as exc:
        if exc.status != 409:
            raise kopf.TemporaryError(f"creating {kind} {name}: {_api_message(exc)}", delay=RETRY_DELAY) from exc
    existing = await _get(read, namespace, name)
    if existing is None:  # deleted between our create and read: try again soon
        raise kopf.TemporaryError(f"{kind} {name} vanished while adopting it", delay=1)
    return existing, False


async def patch(kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of an object the operator owns; returns the object as patched."""
    _still_leading(f"patching {kind} {name}")
    resp = await _call(_calls(kind)[2], name, namespace, body, field_manager=FIELD_MANAGER, _preload_content=False)
    return dict(json.loads(resp.data))


async def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return await _get(_calls(kind)[1], namespace, name)


FIELD_MANAGER = "keras-operator"
APPLY = "application/apply-patch+yaml"


def _owned(obj: dict[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


# Lists Kubernetes merges by key (x-kubernetes-list-type: map): another manager's entries (an env var
# `kubectl set env` added, an injected sidecar) stay in them, so only the entries the operator sets are
# compared, each with the entry of the same key. Every other list is atomic: compared whole.
_LIST_MAP_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "resourceClaims": ("name",),
    "schedulingGates": ("name",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
    "resizePolicy": ("resourceName",),
    "ownerReferences": ("uid",),
}
_KEY_DEFAULTS = {"protocol": "TCP"}  # a key field the server defaults when it is left out


def _list_keys(field: str, wanted: list[Any]) -> tuple[str, ...] | None:
    if field == "ports":  # a container's ports, or a Service's
        entries = [e for e in wanted if isinstance(e, dict)]
        return ("containerPort", "protocol") if any("containerPort" in e for e in entries) else ("port", "protocol")
    return _LIST_MAP_KEYS.get(field)


def _is_quantity(path: tuple[str, ...]) -> bool:
    """Whether the field at `path` is typed resource.Quantity in the objects the operator writes."""
    if len(path) >= 3 and path[-2] in ("requests", "limits") and path[-3] == "resources":
        return True
    if path[-1:] == ("sizeLimit",):  # an emptyDir's
        return True
    return len(path) >= 2 and path[-2] == "target" and path[-1] in ("averageValue", "value")  # an HPA metric's


def _key_of(entry: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    entry = entry if isinstance(entry, dict) else {}
    return tuple(entry.get(k, _KEY_DEFAULTS.get(k)) for k in keys)


def _covers(actual: Any, wanted: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether `actual` holds every field `wanted` sets, with the same value: quantities by amount (the
    server stores them canonically), list-map entries by key (entries others added do not count), fields
    the API server defaulted or other controllers added ignored."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and _covers(actual[k], v, (*path, k)) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        if not isinstance(actual, list):
            return False
        keys = _list_keys(path[-1], wanted) if path else None
        if keys is not None:
            by_key: dict[tuple[Any, ...], list[Any]] = {}
            for entry in actual:
                by_key.setdefault(_key_of(entry, keys), []).append(entry)
            return all(any(_covers(a, w, path) for a in by_key.get(_key_of(w, keys), [])) for w in wanted)
        return len(actual) == len(wanted) and all(_covers(a, w, path) for a, w in zip(actual, wanted, strict=True))
    if path and _is_quantity(path) and quantity.equal(actual, wanted):
        return True
    return bool(actual == wanted)


async def apply(
    obj: dict[str, Any], hash_annotation: str, owner_uid: str | None, current: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """Server-side apply of `obj` under the operator's own field manager: fields removed from `obj` since
    the last apply disappear, fields someone else changed are set back, fields only others set (an HPA's
    replicas, a mutating webhook's sidecar) stay theirs. `current` is the object as a watch shows it (read
    when not given). An object that exists without `owner_uid` among its owners is never touched.
    -> (the object, "created" | "updated" | None), or (None, None) when it belongs to something else."""
    kind, meta = obj["kind"], obj["metadata"]
    _still_leading(f"applying {kind} {meta['name']}")
    if current is None:
        current = await get(kind, meta["namespace"], meta["name"])
    if current is not None and not _owned(current, owner_uid):
        return None, None
    # Apply only when the spec changed (its hash), or the object drifted from it: not once per resync.
    same_hash = (current or {}).get("metadata", {}).get("annotations", {}).get(hash_annotation) == (
        meta.get("annotations") or {}
    ).get(hash_annotation)
    if current is not None and same_hash and _covers(current, {k: v for k, v in obj.items() if k != "status"}):
        return current, None
    resp = await _call(
        _calls(kind)[2],
        meta["name"],
        meta["namespace"],
        obj,
        field_manager=FIELD_MANAGER,
        force=True,  # the operator's fields are the operator's: a hand edit of one is set back
        _content_type=APPLY,
        _preload_content=False,
    )
    return dict(json.loads(resp.data)), "created" if current is None else "updated"


async def delete_owned(kind: str, namespace: str, name: str, owner_uid: str | None) -> bool:
    """Delete the object if it exists and `owner_uid` owns it; True when something was deleted."""
    current = await get(kind, namespace, name)
    if current is None or not _owned(current, owner_uid):
        return False
    return await delete(kind, namespace, name)


async def delete(kind: str, namespace: str, name: str) -> bool:
    """Delete if present, and what it owns in the background (a Job's default would orphan its pods);
    True when something was deleted."""
    _still_leading(f"deleting {kind} {name}")
    try:
        await _call(_calls(kind)[3], name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def get_custom(resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
    """One of our custom resources ((group, version, plural)); None when there is none."""
    group, version, plural = resource
    api = _api_on(kubernetes.client.CustomObjectsApi, api_client())
    try:
        resp = await _call(
            api.get_namespaced_custom_object, group, version, namespace, plural, name, _preload_content=False
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(json.loads(resp.data))


async def find_custom(resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
    """One of our custom resources by name, read with a list narrowed to that name: the operator may list
    and watch its KerasModelServices, not get them (RBAC). None when there is none."""
    group, version, plural = resource
    api = _api_on(kubernetes.client.CustomObjectsApi, api_client())
    resp = await _call(
        api.list_namespaced_custom_object,
        group,
        version,
        namespace,
        plural,
        field_selector=f"metadata.name={name}",
        _preload_content=False,
    )
    # Filtered here too: a proxy or an old API server may ignore the selector.
    items = json.loads(resp.data).get("items") or []
    return next((dict(i) for i in items if (i.get("metadata") or {}).get("name") == name), None)


async def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    resp = await _call(_core().list_namespaced_pod, namespace, label_selector=selector, _preload_content=False)
    wanted = dict(term.split("=", 1) for term in selector.split(","))
    # Filter here too: a proxy or an old API server may ignore the selector.
    return [
        p
        for p in json.loads(resp.data).get("items", [])
        if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
    ]


async def pod_proxy_get(namespace: str, pod: str, port: int, path: str) -> str | None:
    """GET a pod's HTTP endpoint through the API server's pod proxy (no direct network path needed)."""
    try:
        resp = await _call(
            _core().connect_get_namespaced_pod_proxy_with_path, f"{pod}:{port}", namespace, path, _preload_content=False
        )
    except (ApiException, Rejected, kopf.TemporaryError):
        return None
    return _text(resp)


async def pod_log_tail(namespace: str, pod_name: str, container: str, lines: int = 200) -> str | None:
    """The last lines of the log of the pod's `container` (named always: a pod with an injected sidecar has
    two, and the API server then refuses a request without one); None when it cannot be read now (not
    started, rotated, gone)."""
    try:
        resp = await _call(
            _core().read_namespaced_pod_log,
            pod_name,
            namespace,
            container=container,
            tail_lines=lines,
            _preload_content=False,
        )
    except (ApiException, Rejected, kopf.TemporaryError):
        return None
    return _text(resp)


def _text(resp: Any) -> str:
    """A text body as sent: client versions differ in how they deserialize `str` responses (one returns
    the repr, with escaped newlines), so the operator reads the raw bytes itself."""
    return bytes(resp.data).decode(errors="replace")


async def patch_status(
    resource: tuple[str, str, str],
    namespace: str,
    name: str,
    status: dict[str, Any],
    resource_version: str | None = None,
) -> str | None:
    """A merge patch of a custom resource's status subresource (lists, e.g. conditions, are replaced
    whole), refused with Conflict when `resource_version` is given and the object has moved on.
    -> the resourceVersion it made, None when the resource is gone."""
    _still_leading(f"writing the status of {name}")
    group, version, plural = resource
    api = _api_on(kubernetes.client.CustomObjectsApi, api_client())
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        resp = await _call(
            api.patch_namespaced_custom_object_status,
            group,
            version,
            namespace,
            plural,
            name,
            body,
            field_manager=FIELD_MANAGER,
            _preload_content=False,
        )
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(_api_message(exc)) from exc
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise
        return None
    return str(json.loads(resp.data).get("metadata", {}).get("resourceVersion") or "") or None


EVENT_MESSAGE_MAX = 1024  # the API server refuses longer Event messages
REPORTER = "keras-operator"


async def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about `obj`, as `kubectl describe` shows them. Best effort: an Event that cannot be
    posted is logged, never fails the reconcile. Posted here rather than through kopf.event, which works
    only inside kopf's own per-object tasks (a reconcile started by a resync or a push is not one)."""
    meta = obj["metadata"]
    if lifecycle.LOST.is_set():
        return  # said by the replica that leads now, if it still holds
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
    try:
        await _call(
            _core().create_namespaced_event,
            meta["namespace"],
            body,
            field_manager=FIELD_MANAGER,
            _preload_content=False,  # the answer is not decoded: _call reads it, to free the connection
        )
    except (ApiException, Rejected, kopf.TemporaryError) as exc:
        log.warning("event_not_posted", reason=reason, name=meta["name"], error=str(exc))


async def token_review(token: str, audience: str) -> dict[str, Any]:
    """The API server's verdict on a bearer token for our own audience: the TokenReview's status."""
    api = _api_on(kubernetes.client.AuthenticationV1Api, api_client())
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }
    resp = await _call(api.create_token_review, body, field_manager=FIELD_MANAGER, _preload_content=False)
    return dict(json.loads(resp.data).get("status") or {})
