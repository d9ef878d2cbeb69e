"""Traffic into the emulated cluster as kube-proxy and a Gateway API implementation would route it.

A request "to a Service URL" (http://NAME.NS.svc.cluster.local:PORT/PATH, or NAME.NS / NAME.NS.svc) goes
to one of the Service's endpoints, picked uniformly at random per request (a new connection each time,
as iptables balances connections): the pods of the Service's namespace that match `spec.selector`, are
Ready by the fake Deployment controller's probes, and are not deleted (a deleted pod leaves the
endpoints at once, as Kubernetes marks it terminating; its process may still be draining). The Service
port is resolved to the pod's `targetPort` (a number or a container port name) and then to the local port
the fake kubelet gave it.

HTTPRoutes (gateway.networking.k8s.io/v1) take over as a mesh does (GAMMA): a route whose parentRefs
name the Service (`kind: Service`, group "" or absent, the route's namespace unless given, and `port`
when given) gets the Service's requests. Passing `gateway=("GW", "NS")` sends the request through that
Gateway instead: routes whose parentRefs name it (kind Gateway or absent) and whose `hostnames`, when
set, match the URL's host. The rule that serves a request is the most specific match (Exact path, then
the longest PathPrefix, then method, then the number of header matches; rules without matches match
everything), ties going to the oldest route and then the first rule. Its backendRefs are picked by
`weight` (default 1, 0 never), then a pod of that Service as above. As Gateway implementations answer:
no route rule matching -> 404, no backend with weight or the picked backend Service missing -> 500,
a backend without ready endpoints -> 503. A Service URL without endpoints and without a route is a
refused connection (status 0 in the records). Filters, query-parameter matches and timeouts of routes
are not emulated.

Every request is recorded (status, pod, backend Service, latency), so a test can assert where traffic
went; `Router.load` runs client threads against a URL for a while and collects the same records.

    router = Router(cluster)               # or cluster.traffic
    status, body = router.post_json("http://iris.default.svc.cluster.local:8080/v2/models/iris/infer", payload)
    with router.load(url, payload, clients=4) as load:
        ...                                # roll the Deployment
    assert not load.failures, load.failures[:3]
    assert load.by_backend()["iris-canary"] / len(load.records) == pytest.approx(0.2, abs=0.06)
"""

from __future__ import annotations

import collections
import http.client
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cluster.emulator import HTTPROUTES, PODS, SERVICES

if TYPE_CHECKING:
    from cluster.harness import Cluster

GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class Endpoint:
    """A pod picked to answer: its name, the Service it was picked from, and its local address."""

    namespace: str
    pod: str
    service: str
    address: str  # http://127.0.0.1:PORT


@dataclass(frozen=True)
class Record:
    """One request as the router saw it; status 0: no HTTP answer (refused, reset, timed out)."""

    started: float  # time.monotonic() when it was sent
    latency: float  # seconds
    status: int
    pod: str | None = None
    backend: str | None = None  # the Service whose endpoint answered
    error: str = ""
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Response:
    status: int
    body: bytes
    endpoint: Endpoint | None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class RouteError(Exception):
    """The request got no pod: the status a Gateway would answer (0: a refused connection)."""

    def __init__(self, status: int, message: str, backend: str | None = None) -> None:
        super().__init__(message)
        self.status, self.backend = status, backend


@dataclass(frozen=True)
class Target:
    """Where a URL points: a Service (namespace, name, port), or a Gateway's listener host."""

    host: str
    namespace: str
    name: str
    port: int
    path: str  # with the query string


def parse(url: str) -> Target:
    """A Service URL: http://NAME.NS[.svc[.cluster.local]][:PORT]/PATH (NAME alone means namespace default)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    namespace = labels[1] if len(labels) > 1 else "default"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(host=host, namespace=namespace, name=labels[0], port=parts.port or 80, path=path)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host.count(".") >= pattern.count(".")
    return pattern == host


def _rule_score(
    rule: dict[str, Any], method: str, path: str, headers: dict[str, str]
) -> tuple[int, int, int, int] | None:
    """How specifically the rule matches the request (higher wins), None when it does not."""
    best: tuple[int, int, int, int] | None = None
    lowered = {k.lower(): v for k, v in headers.items()}
    bare_path = path.split("?", 1)[0]
    for match in rule.get("matches") or [{}]:
        spec = match.get("path") or {"type": "PathPrefix", "value": "/"}
        kind, value = spec.get("type", "PathPrefix"), spec.get("value", "/")
        if kind == "Exact":
            if bare_path != value:
                continue
            score = (1, len(value))
        elif kind == "PathPrefix":
            prefix = value.rstrip("/")
            if not (bare_path == prefix or bare_path.startswith(prefix + "/") or not prefix):
                continue
            score = (0, len(prefix))
        elif kind == "RegularExpression":
            if not re.fullmatch(value, bare_path):
                continue
            score = (0, len(value))
        else:
            continue
        if match.get("method") and match["method"].upper() != method.upper():
            continue
        wanted = match.get("headers") or []
        if any(lowered.get(h["name"].lower()) != h["value"] for h in wanted if h.get("type", "Exact") == "Exact"):
            continue
        if any(
            not re.fullmatch(h["value"], lowered.get(h["name"].lower(), ""))
            for h in wanted
            if h.get("type") == "RegularExpression"
        ):
            continue
        candidate = (*score, int(bool(match.get("method"))), len(wanted))
        best = candidate if best is None or candidate > best else best
    return best


class Router:
    """Routes requests to Service URLs through the emulated cluster's endpoints and HTTPRoutes."""

    def __init__(self, cluster: Cluster, seed: int | None = None) -> None:
        self.cluster = cluster
        self.random = random.Random(seed)
        self.records: list[Record] = []
        self._lock = threading.Lock()

    # --- where a request goes (computed in the emulator's loop: a consistent view of the API) ---

    def endpoints(self, service: str, namespace: str = "default", port: int | None = None) -> list[Endpoint]:
        """The Service's ready endpoints for `port` (its first port when None), in pod creation order."""

        async def _endpoints() -> list[Endpoint]:
            return self._endpoints(namespace, service, port)

        return list(self.cluster.call(_endpoints()))

    def routes(self, url: str, gateway: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """The HTTPRoutes that take the URL's requests (for a Service URL, routes with it as parent)."""

        async def _routes() -> list[dict[str, Any]]:
            return self._routes(parse(url), gateway)

        return list(self.cluster.call(_routes()))

    def pick(
        self,
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        gateway: tuple[str, str] | None = None,
    ) -> Endpoint:
        """The pod a request would reach; RouteError when none would."""

        async def _pick() -> Endpoint:
            return self._pick(parse(url), method, headers or {}, gateway)

        return self.cluster.call(_pick())  # type: ignore[no-any-return]

    def _service(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.cluster.emulator is not None
        return self.cluster.emulator.find(SERVICES, namespace, name)

    def _endpoints(self, namespace: str, name: str, port: int | None) -> list[Endpoint]:
        service = self._service(namespace, name)
        if service is None:
            return []
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        ports = spec.get("ports") or []
        entry = next((p for p in ports if port is None or p.get("port") == port), None)
        if not selector or entry is None:
            return []
        target = entry.get("targetPort", entry.get("port"))
        controller = self.cluster.deployments
        assert controller is not None
        assert self.cluster.emulator is not None
        found = []
        for pod in self.cluster.emulator.live(PODS):
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("namespace") != namespace or any(labels.get(k) != v for k, v in selector.items()):
                continue
            if meta.get("deletionTimestamp") or not controller.ready.get((namespace, meta["name"])):
                continue
            container_port = target
            if isinstance(target, str) and not target.isdigit():
                container_port = next(
                    (
                        p["containerPort"]
                        for c in pod["spec"].get("containers", [])
                        for p in c.get("ports", [])
                        if p.get("name") == target
                    ),
                    None,
                )
            local = controller.port_of(namespace, meta["name"], int(container_port)) if container_port else None
            if local is not None:
                found.append(Endpoint(namespace, meta["name"], name, f"http://127.0.0.1:{local}"))
        return found

    def _routes(self, target: Target, gateway: tuple[str, str] | None) -> list[dict[str, Any]]:
        assert self.cluster.emulator is not None
        routes = []
        for route in self.cluster.emulator.live(HTTPROUTES):
            ns = route["metadata"].get("namespace", "default")
            spec = route.get("spec") or {}
            for ref in spec.get("parentRefs") or []:
                if gateway is None:
                    attached = (
                        ref.get("kind") == "Service"
                        and ref.get("group", "") in ("", "core")
                        and ref.get("name") == target.name
                        and ref.get("namespace", ns) == target.namespace
                        and ref.get("port", target.port) == target.port
                    )
                else:
                    hostnames = spec.get("hostnames") or []
                    attached = (
                        ref.get("kind", "Gateway") == "Gateway"
                        and ref.get("group", GATEWAY_GROUP) == GATEWAY_GROUP
                        and (ref.get("name"), ref.get("namespace", ns)) == tuple(gateway)
                        and (not hostnames or any(_host_matches(h, target.host) for h in hostnames))
                    )
                if attached:
                    routes.append(route)
                    break
        # Gateway API precedence between routes: the oldest first, then by namespace/name.
        return sorted(
            routes,
            key=lambda r: (
                r["metadata"].get("creationTimestamp", ""),
                r["metadata"].get("namespace", ""),
                r["metadata"]["name"],
            ),
        )

    def _pick(self, target: Target, method: str, headers: dict[str, str], gateway: tuple[str, str] | None) -> Endpoint:
        routes = self._routes(target, gateway)
        if not routes:
            if gateway is not None:
                raise RouteError(404, f"no HTTPRoute of Gateway {gateway} takes {target.host}")
            return self._endpoint_of(target.namespace, target.name, target.port, missing=0, empty=0)
        best: tuple[tuple[int, int, int, int], int, dict[str, Any], str] | None = None
        order = 0
        for route in routes:
            for rule in (route.get("spec") or {}).get("rules") or [{}]:
                score = _rule_score(rule, method, target.path, headers)
                order -= 1  # earlier routes and rules win ties
                if score is not None and (best is None or (score, order) > (best[0], best[1])):
                    best = (score, order, rule, route["metadata"].get("namespace", "default"))
        if best is None:
            raise RouteError(404, f"no HTTPRoute rule matches {method} {target.path}")
        _, _, rule, route_ns = best
        refs = [r for r in rule.get("backendRefs") or [] if int(r.get("weight", 1)) > 0]
        if not refs:
            raise RouteError(500, "the matching HTTPRoute rule has no backend with weight")
        ref = self.random.choices(refs, weights=[int(r.get("weight", 1)) for r in refs])[0]
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
            raise RouteError(500, f"backend {ref} is not a Service", ref.get("name"))
        # A Service backendRef names its port; without one, the Service's first port.
        return self._endpoint_of(ref.get("namespace", route_ns), ref["name"], ref.get("port"), missing=500, empty=503)

    def _endpoint_of(self, namespace: str, name: str, port: int | None, missing: int, empty: int) -> Endpoint:
        if self._service(namespace, name) is None:
            raise RouteError(missing, f"no Service {namespace}/{name}", name)
        found = self._endpoints(namespace, name, port)
        if not found:
            raise RouteError(empty, f"Service {namespace}/{name} has no ready endpoints on port {port}", name)
        return self.random.choice(found)

    # --- requests ---

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        gateway: tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """Send one request the way the cluster would route it, and record it. A dict or list body is
        sent as JSON. Raises RouteError when no pod gets it and OSError when the pod does not answer
        (recorded with the Gateway's status for a RouteError, else 0)."""
        _, response, error = self.send(method, url, body, headers, gateway, timeout)
        if error is not None:
            raise error
        assert response is not None
        return response

    def send(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        gateway: tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[Record, Response | None, Exception | None]:
        """request() without raising: (its record, the response or None, the error or None)."""
        headers = dict(headers or {})
        data: bytes | None
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            data = body.encode() if isinstance(body, str) else body
        target = parse(url)
        started = time.monotonic()

        async def _pick() -> Endpoint:
            return self._pick(target, method, headers, gateway)

        try:
            endpoint: Endpoint = self.cluster.call(_pick())
        except RouteError as exc:
            record = Record(started, time.monotonic() - started, exc.status, None, exc.backend, str(exc))
            return self._record(record), None, exc
        local = urlsplit(endpoint.address)
        connection = http.client.HTTPConnection(local.hostname or "127.0.0.1", local.port, timeout=timeout)
        try:
            connection.request(method, target.path, body=data, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        except OSError as exc:  # refused, reset or timed out: the client sees no answer
            record = Record(started, time.monotonic() - started, 0, endpoint.pod, endpoint.service, repr(exc))
            return self._record(record), None, exc
        finally:
            connection.close()
        record = Record(started, time.monotonic() - started, answer.status, endpoint.pod, endpoint.service, "", payload)
        return self._record(record), Response(answer.status, payload, endpoint, dict(answer.getheaders())), None

    def post_json(self, url: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        """POST `body` as JSON: (status, the JSON answer or the text when it is not JSON)."""
        response = self.request("POST", url, body, **kwargs)
        try:
            return response.status, response.json()
        except ValueError:
            return response.status, response.body.decode(errors="replace")

    def _record(self, record: Record) -> Record:
        with self._lock:
            self.records.append(record)
        return record

    def load(
        self,
        url: str,
        body: Any = None,
        *,
        clients: int = 4,
        duration: float | None = None,
        requests: int | None = None,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        gateway: tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Load:
        """Start `clients` threads sending `body` (POST when given, else GET) to `url` until `duration`
        seconds have passed, `requests` were sent, or the load is stopped (`with` block, stop())."""
        return Load(
            self, url, body, clients, duration, requests, method or ("POST" if body is not None else "GET"), headers,
            gateway, timeout,
        ).start()  # fmt: skip


class Load:
    """Client threads sending requests through a Router; `records` holds what each request got."""

    def __init__(
        self,
        router: Router,
        url: str,
        body: Any,
        clients: int,
        duration: float | None,
        requests: int | None,
        method: str,
        headers: dict[str, str] | None,
        gateway: tuple[str, str] | None,
        timeout: float,
    ) -> None:
        self.router, self.url, self.body, self.method = router, url, body, method
        self.headers, self.gateway, self.timeout = headers, gateway, timeout
        self.duration, self.requests = duration, requests
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._sent = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True, name=f"load-{i}") for i in range(clients)]

    def start(self) -> Load:
        self._deadline = None if self.duration is None else time.monotonic() + self.duration
        for thread in self._threads:
            thread.start()
        return self

    def _claim(self) -> bool:
        """Whether this client sends one more request."""
        if self._stop.is_set() or (self._deadline is not None and time.monotonic() >= self._deadline):
            return False
        with self._lock:
            if self.requests is not None and self._sent >= self.requests:
                return False
            self._sent += 1
            return True

    def _client(self) -> None:
        while self._claim():
            try:
                record, _, _ = self.router.send(
                    self.method, self.url, self.body, self.headers, self.gateway, self.timeout
                )
            except Exception as exc:  # still a failed request, not a silently dead client
                record = self.router._record(Record(time.monotonic(), 0.0, 0, error=repr(exc)))
            with self._lock:
                self.records.append(record)

    def wait(self, timeout: float | None = None) -> list[Record]:
        """Until every client has finished (the duration or request count reached); -> the records."""
        for thread in self._threads:
            thread.join(timeout)
        return self.records

    def stop(self) -> list[Record]:
        self._stop.set()
        return self.wait()

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    def by_pod(self) -> collections.Counter[str | None]:
        return collections.Counter(r.pod for r in self.records)

    def by_backend(self) -> collections.Counter[str | None]:
        return collections.Counter(r.backend for r in self.records)
