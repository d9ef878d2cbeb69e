"""kmock's KubernetesEmulator plus the API-server behaviour our tests rely on.

Added here: uid / resourceVersion / generation (bumped on spec changes only) / creationTimestamp
/ names from generateName; the status subresource split; equality label selectors on lists;
`pods/NAME/log` with tailLines and `container` (required when a pod has several); owner-reference
garbage collection; TokenReview of the service-account tokens it minted (cluster/tokens.py; the fake
kubelet mints them for projected volumes); hooks so a fake controller sees changes; validating admission
webhooks (cluster/admission.py); the operator's namespace lists refused without a cluster-scoped grant
(`cluster_scoped_grant`); the field manager of every write, as the API server records it
(`write_managers`); what the API server fills into every built-in object it stores: defaults
(cluster/defaults.py) and canonical quantities (cluster/quantity.py); server-side apply with per-manager
field ownership in `metadata.managedFields`, lists merged by their schema's listType/listMapKeys
(cluster/apply.py, cluster/schema.py), strategic merge patches (cluster/strategic.py); CRDs refused as
apiextensions-apiserver refuses them, CEL compiled by a spec-conformant implementation
(cluster/crdcheck.py); a request log trimmed to what is in flight (kmock's full log makes routing
quadratic, and no test here asserts on request history).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import hashlib
import itertools
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import kmock
from kmock._internal import dicts, enums, rendering

from cluster import apply as server_side_apply
from cluster import defaults as server_defaults
from cluster import quantity, schema, strategic
from cluster.admission import WEBHOOKS, Admission
from cluster.crdcheck import crd_problems
from cluster.tokens import API_AUDIENCE, TokenIssuer

Hook = Callable[[str, kmock.resource, dict[str, Any]], Awaitable[None] | None]

JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
EVENTS = kmock.resource("", "v1", "events")
TOKENREVIEWS = kmock.resource("authentication.k8s.io", "v1", "tokenreviews")
SERVICES = kmock.resource("", "v1", "services")
HTTPROUTES = kmock.resource("gateway.networking.k8s.io", "v1", "httproutes")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define
class Fault:
    """Answer the next `count` matching requests with `status`; `after_store` applies the change first
    (the API did the work but the response was lost), else the request changes nothing.

    For faults spread over a run: `action` / `resource` None match any (never a watch stream, unless
    `action` names WATCH: dropped streams are drop_watches()'s); `agents` limits them to requests whose
    User-Agent starts with one of these (OPERATOR_AGENTS: the operator's, not the fake controllers'
    or the test's); `share` is the fraction of matching requests hit, each drawn from `seed`, the
    request's method and path and how often that request came before (a retry draws again; the same
    seed gives the same draws); `delay` holds the answer back that long (status None: the request is
    then served, only slowly); a 429 carries `retry_after` as its Retry-After header."""

    action: enums.action | None
    resource: kmock.resource | None
    status: int | None
    count: int = 1
    after_store: bool = False
    hits: int = 0
    share: float = 1.0
    seed: int = 0
    delay: float = 0.0
    retry_after: int | None = None
    agents: tuple[str, ...] = ()
    _seen: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)

    def strikes(self, request: rendering.Request) -> bool:
        """Whether this request meets the fault (counted in `hits` when it does)."""
        if self.hits >= self.count:
            return False
        if self.action is None and request.action == enums.action.WATCH:
            return False
        if (self.action is not None and self.action != request.action) or (
            self.resource is not None and self.resource != request.resource
        ):
            return False
        if self.agents and not (request.headers.get("User-Agent") or "").startswith(self.agents):
            return False
        if self.share < 1.0:
            what = (str(request.method), request.url.path)
            self._seen[what] += 1
            digest = hashlib.blake2b(f"{self.seed}|{what}|{self._seen[what]}".encode(), digest_size=8).digest()
            if int.from_bytes(digest) / 2**64 >= self.share:
                return False
        self.hits += 1
        return True

    def response(self) -> aiohttp.web.Response:
        """A Status body as the API server sends it, with Retry-After on a 429."""
        assert self.status is not None
        reason = _REASONS.get(self.status, "InjectedFault")
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"injected by the test ({reason})",
            "reason": reason,
            "code": self.status,
        }
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
            body["details"] = {"retryAfterSeconds": self.retry_after}
        return aiohttp.web.json_response(body, status=self.status, headers=headers)


_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


# kopf itself (named "keras-operator/... kopf/..." by the operator's login), and the kubernetes client the
# operator uses.
OPERATOR_AGENTS = ("kopf/", "keras-operator/", "OpenAPI-Generator/")
# (group, resource[/subresource], verb) of every call the operator made, across all tests of the session:
# the chart's RBAC must cover these (tests/e2e/test_rbac.py records them for its own scenarios).
OPERATOR_CALLS: set[tuple[str, str, str]] = set()


def _verb(request: rendering.Request) -> str:
    if request.method == enums.method.GET:
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {
        enums.method.POST: "create",
        enums.method.PATCH: "patch",
        enums.method.PUT: "update",
        enums.method.DELETE: "delete",
    }.get(request.method, str(request.method).lower())


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    hooks: list[Hook] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    # (namespace, pod, port) -> the local port the fake kubelet gave it, for pods/NAME:PORT/proxy.
    port_of: Callable[[str, str, int], int | None] | None = None
    watch_starts: collections.Counter[kmock.resource] = attrs.field(factory=collections.Counter)
    tokens: TokenIssuer = attrs.field(factory=TokenIssuer)
    # A review fails when the token's pod is gone or is another pod of the same name, as the API server's does.
    check_token_pods: bool = True
    log_reads: int = 0  # pods/log requests answered: what progress pushed by trainers saves
    # (resource, namespace, name, field manager) -> that manager's last applied configuration.
    applied: dict[tuple[kmock.resource, str, str, str], dict[str, Any]] = attrs.field(factory=dict)
    applies: int = 0  # server-side apply requests that changed something
    # (resource, namespace, name) -> server-side apply requests received, whether they changed anything or not.
    apply_requests: collections.Counter[tuple[kmock.resource, str, str]] = attrs.field(factory=collections.Counter)
    # (resource, namespace, name) -> (field manager, operation) -> the fields it owns (cluster/apply.py), as
    # metadata.managedFields shows them.
    owners: dict[tuple[kmock.resource, str, str], server_side_apply.Owners] = attrs.field(factory=dict)
    # (resource, namespace, name) -> how many times it was created (stored): what "created once" is checked by.
    creations: collections.Counter[tuple[kmock.resource, str, str]] = attrs.field(factory=collections.Counter)
    # Requests answered 429 with Retry-After: ((method, path), when it may come again); a retry sooner
    # counts in early_retries. Keyed by path, so only requests that name their object are followed.
    throttled: dict[tuple[str, str], float] = attrs.field(factory=dict)
    early_retries: list[tuple[str, str, float]] = attrs.field(factory=list)
    admission: Admission = attrs.field(factory=Admission)  # the validating webhooks' calls (cluster/admission.py)
    # Whether the operator holds a cluster-scoped grant to list and watch namespaces (the chart's ClusterRole
    # mode); off, those requests are refused 403 as the chart's namespaced mode (a Role per namespace) has it.
    # The harness turns it off for an operator run that watches named namespaces.
    cluster_scoped_grant: bool = True
    # (resource plural, verb) -> requests of the operator refused 403 for want of that grant.
    forbidden: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    # (User-Agent's first word, resource[/subresource], field manager) -> writes (create, patch, update) made:
    # the manager is the fieldManager parameter, else the User-Agent's first word, as the API server records it.
    write_managers: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter)
    # (namespace, pod, container) -> the log of a container other than the pod's first (an injected sidecar:
    # the fake kubelets run only the first, whose log is pod_logs[(namespace, pod)]).
    container_logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict)
    # Seconds the garbage collector lags behind a deletion (0: at once). The real one works from its own
    # watches, so an owner's dependents outlive it for a while: what a resource re-applied under the same
    # name meets (its new Job's name still taken by the old one).
    gc_delay: float = 0.0
    _collections: set[asyncio.Task[None]] = attrs.field(factory=set)
    _watch_drop: asyncio.Event = attrs.field(factory=asyncio.Event)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000))

    def live(self, resource: kmock.resource) -> list[dict[str, Any]]:
        return [obj.raw for (res, _, _), obj in list(self.objects.items()) if res == resource and not obj.deleted]

    def find(self, resource: kmock.resource, namespace: str, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    # --- service-account tokens (what the kubelet mounts) and TokenReview ---

    def mint_token(
        self,
        namespace: str,
        pod: str,
        uid: str,
        audience: str | list[str] = API_AUDIENCE,
        ttl: float = 3600,
        service_account: str = "default",
    ) -> str:
        """A token bound to the pod, as the kubelet gets for a projected serviceAccountToken volume."""
        return self.tokens.mint(namespace, pod, uid, audience, ttl, service_account)

    def forge_token(
        self,
        namespace: str,
        pod: str,
        uid: str,
        audience: str | list[str] = API_AUDIENCE,
        ttl: float = 3600,
        service_account: str = "default",
    ) -> str:
        """The same claims, signed with a key that is not the emulator's: never authenticated."""
        return self.tokens.forge(namespace, pod, uid, audience, ttl, service_account)

    def expire_token(self, token: str) -> None:
        self.tokens.expire(token)

    def revoke_token(self, token: str) -> None:
        self.tokens.revoke(token)

    def review_token(self, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
        """The `status` the API server would answer to a TokenReview of `token` for `audiences`."""
        return self.tokens.review(token, audiences, self._pod_uid if self.check_token_pods else None)

    def _pod_uid(self, namespace: str, name: str) -> str | None:
        pod = self.find(PODS, namespace, name)
        return None if pod is None else pod.get("metadata", {}).get("uid")

    def _token_review(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """POST tokenreviews: answered, never stored (201, as the API server does)."""
        body = request.data if isinstance(request.data, dict) else {}
        spec = body.get("spec") or {}
        if not spec.get("token"):
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message="token is required for TokenReview in authentication"
            )
        review = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None, **(body.get("metadata") or {})},
            "spec": spec,
            "status": self.review_token(spec["token"], spec.get("audiences")),
        }
        return aiohttp.web.json_response(review, status=201)

    async def _handle(self, request: rendering.Request) -> Any:
        action, resource = request.action, request.resource
        if (
            resource is not None
            and resource.plural
            and (request.headers.get("User-Agent") or "").startswith(OPERATOR_AGENTS)
        ):
            sub = (request.subresource or "").split("/")[0]
            OPERATOR_CALLS.add(
                (resource.group or "", f"{resource.plural}/{sub}" if sub else resource.plural, _verb(request))
            )
        if resource is not None and resource.plural and _verb(request) in ("create", "patch", "update"):
            agent = (request.headers.get("User-Agent") or "").split("/")[0]
            sub = (request.subresource or "").split("/")[0]
            what = f"{resource.plural}/{sub}" if sub else resource.plural
            self.write_managers[(agent, what, request.params.get("fieldManager") or agent)] += 1
        self._check_retry_after(request)
        fault = None
        for candidate in self.faults:
            if candidate.strikes(request):
                if candidate.delay:
                    await asyncio.sleep(candidate.delay)
                if candidate.status is not None:
                    fault = candidate
                    break
        if fault is not None and not fault.after_store:
            self._requests[:] = [r for r in self._requests if r is not request]
            return self._fault_answer(fault, request)
        if resource == PODS and request.subresource == "log" and action == enums.action.FETCH:
            return self._pod_log(request)
        if resource == TOKENREVIEWS and action == enums.action.CREATE:
            self._requests[:] = [r for r in self._requests if r is not request]
            review = self._token_review(request)
            if fault is not None:
                return self._fault_answer(fault, request)  # reviewed, the answer lost
            return review
        if resource == PODS and (request.subresource or "").startswith("proxy"):
            return await self._pod_proxy(request)
        if resource == CRDS and action in (enums.action.CREATE, enums.action.UPDATE) and isinstance(request.data, dict):
            self._check_crd(request)
        if (
            resource is not None
            and action == enums.action.UPDATE
            and (request.headers.get("Content-Type") or "").startswith("application/apply-patch")
        ):
            answered = await self._apply(request)
            if answered is not None:
                return answered
        if resource is not None and isinstance(request.data, dict):
            if action == enums.action.CREATE:
                self._stamp_create(request)
            elif action == enums.action.UPDATE and request.name is not None:
                self._stamp_update(request)
        if resource is not None and resource != WEBHOOKS and (configurations := self.live(WEBHOOKS)):
            try:
                await self.admission.check(configurations, request, self._current(request))
            except kmock.KubernetesError:
                self._requests[:] = [r for r in self._requests if r is not request]
                raise
        try:
            response = await super()._handle(request)
        finally:
            # Routing checks each request against every logged one, so keep only those in flight.
            self._requests[:] = [r for r in self._requests if r is not request]
        if resource is not None and action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            await self._after_change(action, request)
        if resource is not None and action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.get("metadata") or {}
            self.creations[(resource, request.namespace or meta.get("namespace") or "", meta.get("name"))] += 1
        if fault is not None:
            return self._fault_answer(fault, request)  # the change is stored; its answer is lost
        return response

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        refused = self._namespaces_refused(raw_request)
        if refused is not None:
            return refused
        return await super().__call__(raw_request)

    def _namespaces_refused(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.Response | None:
        """The operator's list or watch of the cluster's namespaces: recorded as its call, and refused 403
        without a cluster-scoped grant, as the API server answers the chart's namespaced mode. Decided on the
        raw request: kmock reads /api/v1/namespaces as a namespace scope missing its name (a 500)."""
        if raw_request.method != "GET" or raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return None
        if not (raw_request.headers.get("User-Agent") or "").startswith(OPERATOR_AGENTS):
            return None
        verb = "watch" if raw_request.query.get("watch") in ("true", "1") else "list"
        OPERATOR_CALLS.add(("", "namespaces", verb))
        if self.cluster_scoped_grant:
            return None
        self.forbidden[("namespaces", verb)] += 1
        user = "system:serviceaccount:keras-system:keras-operator"
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'namespaces is forbidden: User "{user}" cannot {verb} resource "namespaces" in API group ""'
            " at the cluster scope",
            "reason": "Forbidden",
            "details": {"kind": "namespaces"},
            "code": 403,
        }
        return aiohttp.web.json_response(body, status=403)

    def _check_crd(self, request: rendering.Request) -> None:
        """Refuse a CRD the API server would (cluster/crdcheck.py), with its 422, before anything is stored.
        An update is judged as the merge of the stored CRD and the patch (an apply's configuration too: the
        fields a manager drops by leaving them out are not modelled here)."""
        # Keyed as kmock stores a cluster-scoped object: namespace None (find() looks under "").
        key = (CRDS, request.namespace, request.name)
        stored = self.objects[key] if request.name and key in self.objects and not self.objects[key].deleted else None
        current = copy.deepcopy(stored.raw) if stored is not None and request.action == enums.action.UPDATE else None
        if current is not None:
            new: Any = dicts.patch_dict(current, copy.deepcopy(request.data))
        elif request.action == enums.action.CREATE or "apply-patch" in (request.headers.get("Content-Type") or ""):
            new = request.data  # a create, or an apply that creates the CRD from its configuration
        else:
            return  # a patch of nothing: kmock's 404
        if isinstance(new, dict) and (problems := crd_problems(new)):
            self._requests[:] = [r for r in self._requests if r is not request]
            name = (new.get("metadata") or {}).get("name") or request.name
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message=f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: ' + "; ".join(problems),
                details={"group": "apiextensions.k8s.io", "kind": "CustomResourceDefinition", "name": name},
            )

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        """The stored object a write names (a copy), if any: an update's oldObject."""
        if request.name is None or request.resource is None:
            return None
        return self.find(request.resource, request.namespace or "", request.name)

    def _fault_answer(self, fault: Fault, request: rendering.Request) -> aiohttp.web.Response:
        key = self._retry_key(request)
        if fault.retry_after is not None and key is not None:
            self.throttled[key] = asyncio.get_running_loop().time() + fault.retry_after
        return fault.response()

    @staticmethod
    def _retry_key(request: rendering.Request) -> tuple[str, str] | None:
        """What a retry of this request looks like: its method and the path of the object it names (a
        create, by the name in its body); None for a generated name (an Event's)."""
        if request.name is not None:
            return str(request.method), request.url.path
        name = ((request.data if isinstance(request.data, dict) else {}).get("metadata") or {}).get("name")
        return None if not name else (str(request.method), f"{request.url.path}/{name}")

    def _check_retry_after(self, request: rendering.Request) -> None:
        if not self.throttled:
            return
        key = self._retry_key(request)
        due = self.throttled.pop(key, None) if key is not None else None
        if due is not None and (early := due - asyncio.get_running_loop().time()) > 0:
            self.early_retries.append((*key, early))

    def _KubernetesEmulator__get_objs(self, request: rendering.Request, strict: bool) -> list[Any]:
        # kmock scans every stored object to serve one by name; a keyed lookup keeps a GET or PATCH
        # constant-time when a benchmark holds thousands of objects (the scan remains the fallback).
        if request.resource is not None and request.namespace is not None and request.name is not None:
            found = self.objects._objects.get((request.resource, request.namespace, request.name))
            if found is not None:
                return [found]
        return list(super()._KubernetesEmulator__get_objs(request, strict))  # type: ignore[misc]

    async def _apply(self, request: rendering.Request) -> Any:
        """Server-side apply (cluster/apply.py): a create when the object is absent, no write at all when
        the configuration changes nothing, a 409 when it would change fields another manager owns (unless
        `force`), else the merge patch that makes the object what apply says (sent on through the ordinary
        update path). -> a response when answered here, else None."""
        manager = request.params.get("fieldManager")
        if not manager or not isinstance(request.data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="apply needs a fieldManager")
        config = copy.deepcopy(request.data)
        config.pop("status", None)
        resource, namespace, name = request.resource, request.namespace or "", request.name or ""
        self.apply_requests[(resource, namespace, name)] += 1
        current = self.find(resource, namespace, name)
        owners = self.owners.get((resource, namespace, name), {}) if current is not None else {}
        try:
            new, after = server_side_apply.apply(
                current,
                owners,
                manager,
                config,
                schema.root(resource.group or "", resource.plural or ""),
                # Go's ParseBool: the Python client sends "True"
                force=(request.params.get("force") or "").lower() in ("1", "t", "true"),
                finish=lambda obj: self._server_fills(resource, obj),
            )
        except server_side_apply.Conflicts as exc:
            self._requests[:] = [r for r in self._requests if r is not request]
            raise kmock.KubernetesError(status=409, reason="Conflict", message=str(exc)) from exc
        self.applied[(resource, namespace, name, manager)] = config
        if current is None:
            self._requests[:] = [r for r in self._requests if r is not request]
            return await self._create_applied(resource, namespace, name, new, after)
        self._record_owners(resource, new, after, current)
        patch = server_side_apply.merge_patch(current, new)
        patch.pop("status", None)
        if not patch:
            self._requests[:] = [r for r in self._requests if r is not request]
            return aiohttp.web.json_response(current)  # nothing changes: no new resourceVersion, no event
        self.applies += 1
        request.data.clear()
        request.data.update(patch)
        return None

    def _server_fills(self, resource: kmock.resource, obj: dict[str, Any]) -> None:
        """What the API server fills into every written object (cluster/defaults.py): defaults, canonical
        quantities (a malformed one is a 400, as the server's decoding answers)."""
        group, plural = resource.group or "", resource.plural or ""
        try:
            server_defaults.canonicalize(group, plural, obj)
        except quantity.QuantityError as exc:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(exc)) from exc
        server_defaults.apply_defaults(group, plural, obj)

    def _record_owners(
        self,
        resource: kmock.resource,
        obj: dict[str, Any],
        owners: server_side_apply.Owners,
        previous: dict[str, Any] | None,
    ) -> None:
        """Keep `owners` for `obj` and show them in its metadata.managedFields."""
        meta = obj.setdefault("metadata", {})
        self.owners[(resource, meta.get("namespace") or "", meta.get("name") or "")] = owners
        api_version = obj.get("apiVersion") or "/".join(filter(None, (resource.group, resource.version)))
        before = (previous or {}).get("metadata", {}).get("managedFields") or []
        meta["managedFields"] = server_side_apply.managed_fields(owners, api_version, _now(), before)

    @staticmethod
    def _field_manager(request: rendering.Request) -> str:
        """The manager of a write, as the API server names it: the fieldManager parameter, else the
        User-Agent up to its first '/' (the Python client's "OpenAPI-Generator", kubectl's "kubectl")."""
        return request.params.get("fieldManager") or (request.headers.get("User-Agent") or "").split("/")[0][:128]

    async def _create_applied(
        self,
        resource: kmock.resource,
        namespace: str,
        name: str,
        new: dict[str, Any],
        owners: server_side_apply.Owners,
    ) -> Any:
        meta = new.setdefault("metadata", {})
        meta.update(
            name=name,
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            generation=1,
            creationTimestamp=_now(),
        )
        self._record_owners(resource, new, owners, None)
        key = (resource, namespace, name)
        async with self._lock:
            if key not in self._objects:
                self._objects[key] = new
            else:
                self._objects[key].create(new)
            raw = self._objects[key].last.raw
            await self._buses[resource].put({"type": "ADDED", "object": raw})
        self.applies += 1
        self.creations[key] += 1
        await self._notify("ADDED", resource, copy.deepcopy(raw))
        return aiohttp.web.json_response(raw, status=201)

    def _stamp_create(self, request: rendering.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        resource = request.resource
        if resource is None or resource == EVENTS or self.find(resource, meta.get("namespace") or "", meta["name"]):
            return  # an Event's owners are of no interest; an existing object: kmock answers 409
        self._server_fills(resource, request.data)
        node = schema.root(resource.group or "", resource.plural or "")
        owners = server_side_apply.update(None, request.data, {}, self._field_manager(request), node)
        self._record_owners(resource, request.data, owners, None)

    def _stamp_update(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # kmock answers 404
        current = self.objects[key].raw
        patch = request.data
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current.get("metadata", {}).get("resourceVersion"):
            # A write conditioned on the version the client read: someone else wrote in between.
            raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has been modified")
        # The status subresource: /status changes only status; the main endpoint never does.
        if request.subresource == "status":
            for k in list(patch):
                if k != "status":
                    del patch[k]
        else:
            patch.pop("status", None)
            if not (request.headers.get("Content-Type") or "").startswith("application/apply-patch"):
                self._own_update(request, copy.deepcopy(current))  # an apply's owners are _apply's
        meta_patch = patch.setdefault("metadata", {})
        meta_patch["resourceVersion"] = str(next(self._versions))
        if "spec" in patch:
            new_spec = dicts.patch_dict(copy.deepcopy(current.get("spec") or {}), patch["spec"])
            if new_spec != current.get("spec"):
                meta_patch["generation"] = int(current.get("metadata", {}).get("generation") or 1) + 1

    def _own_update(self, request: rendering.Request, current: dict[str, Any]) -> None:
        """A patch or update as the server stores it: the object it makes gets the server's defaults and
        canonical quantities, and its manager owns the fields it changed; request.data becomes the merge
        patch to that object (what kmock stores)."""
        resource = request.resource
        assert resource is not None
        node = schema.root(resource.group or "", resource.plural or "")
        if (request.headers.get("Content-Type") or "").startswith("application/strategic-merge-patch"):
            if not schema.builtin(resource.group or "", resource.plural or ""):
                raise kmock.KubernetesError(  # the server has no patch strategies for custom resources
                    status=415,
                    reason="UnsupportedMediaType",
                    message="the body of the request was in an unknown format",
                )
            new = strategic.apply(copy.deepcopy(current), request.data, node)
        else:
            new = dicts.patch_dict(copy.deepcopy(current), request.data)
        new["status"] = current.get("status")
        if new["status"] is None:
            del new["status"]
        self._server_fills(resource, new)
        owners = self.owners.get((resource, request.namespace or "", request.name or ""), {})
        after = server_side_apply.update(current, new, owners, self._field_manager(request), node)
        self._record_owners(resource, new, after, current)
        patch = server_side_apply.merge_patch(current, new)
        patch.pop("status", None)
        request.data.clear()
        request.data.update(patch)

    async def _after_change(self, action: enums.action, request: rendering.Request) -> None:
        name = request.name or (request.data or {}).get("metadata", {}).get("name")
        namespace = request.namespace or (request.data or {}).get("metadata", {}).get("namespace")
        key = (request.resource, namespace, name)
        # Only a deletion (a DELETE, or the PATCH that drops the last finalizer) can orphan anything;
        # scanning on every write would make the emulator quadratic in the number of objects.
        if action == enums.action.DELETE or (key in self.objects and self.objects[key].deleted):
            if self.gc_delay > 0:
                self._collect_garbage_later()
            else:
                await self._collect_garbage()
        if key not in self.objects:
            return
        obj = self.objects[key]
        event = "DELETED" if obj.deleted else ("ADDED" if action == enums.action.CREATE else "MODIFIED")
        await self._notify(event, request.resource, copy.deepcopy(obj.last.raw))

    async def _notify(self, event: str, resource: kmock.resource, raw: dict[str, Any]) -> None:
        for hook in list(self.hooks):
            result = hook(event, resource, raw)
            if result is not None:
                await result

    def _collect_garbage_later(self) -> None:
        async def later() -> None:
            await asyncio.sleep(self.gc_delay)
            await self._collect_garbage()

        task = asyncio.get_running_loop().create_task(later())
        self._collections.add(task)  # a reference until it is done
        task.add_done_callback(self._collections.discard)

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners are all gone (foreground deletion is not emulated)."""
        while True:
            live_uids = {obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted}
            orphans = [
                (key, obj)
                for key, obj in list(self.objects.items())
                if not obj.deleted
                and (refs := obj.raw.get("metadata", {}).get("ownerReferences"))
                and not any(ref.get("uid") in live_uids for ref in refs)
            ]
            if not orphans:
                return
            for (resource, _, _), obj in orphans:
                async with self._lock:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
                await self._notify("DELETED", resource, copy.deepcopy(raw))

    async def _serve_list(self, request: rendering.Request) -> Any:
        payload = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            payload["items"] = [
                item for item in payload["items"] if _matches(item.get("metadata", {}).get("labels") or {}, selector)
            ]
        return payload

    async def _serve_watch(self, request: rendering.Request) -> Any:
        self.watch_starts[request.resource] += 1
        dropped = self._watch_drop
        upstream = super()._serve_watch(request).__aiter__()
        while True:
            item = asyncio.ensure_future(upstream.__anext__())
            drop = asyncio.ensure_future(dropped.wait())
            done, _ = await asyncio.wait({item, drop}, return_when=asyncio.FIRST_COMPLETED)
            if drop in done:  # the stream ends, as when an API server restarts or a proxy times out
                item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await item  # the generator finishes its cancellation before it is closed
                await upstream.aclose()
                return
            drop.cancel()
            try:
                yield item.result()
            except StopAsyncIteration:
                return

    async def delete_silently(self, resource: kmock.resource, namespace: str, name: str, collect: bool = True) -> None:
        """Delete an object with no watch event of its own: what a client whose watch was re-listed after a
        410 Gone never sees (the deletion fell in the gap, and the list simply lacks the object). The fake
        controllers hear of it, and its dependents are collected with their own events, as in a cluster
        (`collect=False`: not yet, as a garbage collector that lags)."""
        obj = self.objects[(resource, namespace, name)]
        async with self._lock:
            raw = obj.raw
            obj.delete()
        await self._notify("DELETED", resource, copy.deepcopy(raw))
        if collect:
            await self._collect_garbage()

    def drop_watches(self) -> None:
        """End every open watch stream now; clients must notice and watch again."""
        self._watch_drop.set()
        self._watch_drop = asyncio.Event()

    def _pod_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """GET pods/NAME/log: plain text, as the kubelet serves it, honouring tailLines and `container`,
        which the API server requires of a pod with several containers (an injected sidecar makes two)."""
        self.log_reads += 1
        namespace, name = request.namespace or "", request.name or ""
        pod = self.find(PODS, namespace, name)
        if pod is None:
            raise kmock.KubernetesObjectNotFoundError()
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        init_names = [c.get("name") for c in spec.get("initContainers") or []]
        container = request.params.get("container")
        if not container:
            if len(names) != 1:
                message = f"a container name must be specified for pod {name}"
                if names:
                    message += f", choose one of: [{' '.join(names)}]"
                    if init_names:
                        message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise kmock.KubernetesError(status=400, reason="BadRequest", message=message)
            container = names[0]
        elif container not in names + init_names:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"container {container} is not valid for pod {name}"
            )
        if names and container == names[0]:
            text = self.pod_logs.get((namespace, name), "")
        else:
            text = self.container_logs.get((namespace, name, container), "")
        tail = request.params.get("tailLines")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail) :])
        return aiohttp.web.Response(text=text, content_type="text/plain")

    async def _pod_proxy(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """GET pods/NAME:PORT/proxy/PATH: forwarded to the pod's process, as the API server does."""
        name, _, port = (request.name or "").partition(":")
        local = self.port_of(request.namespace or "", name, int(port or 80)) if self.port_of else None
        if local is None:
            raise kmock.KubernetesObjectNotFoundError()
        path = (request.subresource or "").removeprefix("proxy")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{local}{path or '/'}") as resp:
            body = await resp.read()
            return aiohttp.web.Response(body=body, status=resp.status, content_type=resp.content_type)


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """The API groups and kinds the operator and its tests use, as discovery serves them."""
    verbs = {"list", "watch", "get", "create", "patch", "delete"}
    declared = {
        "v1/namespaces": {"namespaced": False},
        "admissionregistration.k8s.io/v1/validatingwebhookconfigurations": {
            "kind": "ValidatingWebhookConfiguration",
            "singular": "validatingwebhookconfiguration",
            "namespaced": False,
        },
        "apiextensions.k8s.io/v1/customresourcedefinitions": {"namespaced": False},
        "v1/events": {"namespaced": True},
        "v1/pods": {"namespaced": True, "subresources": {"status", "log"}},
        "v1/configmaps": {"namespaced": True},
        "batch/v1/jobs": {"namespaced": True, "subresources": {"status"}},
        "apps/v1/deployments": {"namespaced": True, "subresources": {"status", "scale"}},
        "v1/services": {"namespaced": True},
        "coordination.k8s.io/v1/leases": {"namespaced": True},
        "authentication.k8s.io/v1/tokenreviews": {
            "kind": "TokenReview",
            "singular": "tokenreview",
            "namespaced": False,
            "verbs": {"create"},
        },
        "autoscaling/v2/horizontalpodautoscalers": {"namespaced": True, "subresources": {"status"}},
        # Gateway API routes: what the traffic router (cluster/traffic.py) splits requests by.
        "gateway.networking.k8s.io/v1/httproutes": {
            "kind": "HTTPRoute",
            "singular": "httproute",
            "namespaced": True,
            "subresources": {"status"},
        },
        "kerasoperator.dev/v1alpha1/kerasmodelservices": {
            "kind": "KerasModelService",
            "singular": "kerasmodelservice",
            "namespaced": True,
            "subresources": {"status", "scale"},
            "shortnames": {"kms"},
            "categories": {"keras"},
        },
        "kerasoperator.dev/v1alpha1/kerastrainingjobs": {
            "kind": "KerasTrainingJob",
            "singular": "kerastrainingjob",
            "namespaced": True,
            "subresources": {"status"},
            "shortnames": {"ktj"},
            "categories": {"keras"},
        },
    }
    for key, info in declared.items():
        emulator.resources[key] = {"verbs": verbs, **info}


ALWAYS = 10**9  # a fault's count: every matching request


def counting(emulator: Emulator, verb: enums.action, resource: kmock.resource) -> Fault:
    """A fault that changes nothing (no status, no delay): it counts the operator's matching requests."""
    fault = Fault(verb, resource, None, count=ALWAYS, agents=OPERATOR_AGENTS)
    emulator.faults.append(fault)
    return fault
