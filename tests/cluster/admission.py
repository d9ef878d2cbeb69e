"""Validating admission webhooks, as the API server calls them: what the emulator lacked for a test of
`kubectl apply` being refused by the operator's webhook.

The ValidatingWebhookConfigurations stored in the emulator are honoured for creates and updates (not
server-side apply, which no test sends to a webhooked kind): each webhook whose rules and namespace
selector match is sent an AdmissionReview v1 over HTTPS, checked against its caBundle and the Service's
DNS name; its Service is reached at the local address the test registers in `Admission.hosts`. A denial
becomes the API server's error ("admission webhook NAME denied the request: ..."), with the webhook's
code; a webhook that cannot be reached, times out or answers nonsense fails the request or is skipped
as its failurePolicy says (Fail when unset, as in admissionregistration/v1).
"""

from __future__ import annotations

import base64
import copy
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kmock
from kmock._internal import dicts, enums, rendering

WEBHOOKS = kmock.resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")
OPERATIONS = {enums.action.CREATE: "CREATE", enums.action.UPDATE: "UPDATE"}


def _matches(values: list[str] | None, value: str) -> bool:
    return bool(values) and ("*" in values or value in values)  # type: ignore[operator]


def _rule_matches(webhook: dict[str, Any], resource: kmock.resource, operation: str) -> bool:
    return any(
        _matches(rule.get("operations"), operation)
        and _matches(rule.get("apiGroups"), resource.group or "")
        and _matches(rule.get("apiVersions"), resource.version or "")
        and _matches(rule.get("resources"), resource.plural or "")
        for rule in webhook.get("rules") or []
    )


def _namespace_matches(webhook: dict[str, Any], namespace: str | None) -> bool:
    """namespaceSelector by the kubernetes.io/metadata.name label (the only one these tests' namespaces have)."""
    selector = webhook.get("namespaceSelector") or {}
    labels = {"kubernetes.io/metadata.name": namespace or ""}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for term in selector.get("matchExpressions") or []:
        present = term["key"] in labels
        value = labels.get(term["key"])
        operator, values = term["operator"], term.get("values") or []
        if (
            (operator == "In" and value not in values)
            or (operator == "NotIn" and value in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


@dataclass
class Admission:
    # "SERVICE.NAMESPACE.svc:PORT" -> "127.0.0.1:PORT": where a webhook's Service is reached from the test.
    hosts: dict[str, str] = field(default_factory=dict)
    calls: int = 0  # AdmissionReviews sent
    warnings: list[str] = field(default_factory=list)  # what webhooks said to the user (kubectl prints them)

    async def check(
        self,
        configurations: list[dict[str, Any]],
        request: rendering.Request,
        current: dict[str, Any] | None,
    ) -> None:
        """Raise the API server's error when a webhook denies the write (or fails closed); else return."""
        operation = OPERATIONS.get(request.action)
        resource = request.resource
        if operation is None or resource is None or request.subresource or not isinstance(request.data, dict):
            return
        new = request.data
        if operation == "UPDATE":
            if current is None:
                return  # kmock answers 404
            if request.method != enums.method.PUT:  # a merge patch: the object as it would be stored
                new = dicts.patch_dict(copy.deepcopy(current), request.data)
        namespace = request.namespace or (new.get("metadata") or {}).get("namespace")
        for configuration in configurations:
            for webhook in configuration.get("webhooks") or []:
                if _rule_matches(webhook, resource, operation) and _namespace_matches(webhook, namespace):
                    await self._call(webhook, resource, operation, namespace, new, current)

    async def _call(
        self,
        webhook: dict[str, Any],
        resource: kmock.resource,
        operation: str,
        namespace: str | None,
        new: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> None:
        name = webhook["name"]
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": resource.group or "", "version": resource.version, "kind": new.get("kind")},
                "resource": {"group": resource.group or "", "version": resource.version, "resource": resource.plural},
                "name": (new.get("metadata") or {}).get("name"),
                "namespace": namespace,
                "operation": operation,
                "object": new,
                "oldObject": old if operation == "UPDATE" else None,
                "dryRun": False,
                "userInfo": {"username": "test"},
            },
        }
        self.calls += 1
        try:
            response = await self._post(webhook, review)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError, ValueError, KeyError) as exc:
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                return
            raise kmock.KubernetesError(
                status=500,
                reason="InternalError",
                message=f'Internal error occurred: failed calling webhook "{name}": {type(exc).__name__}: {exc}',
            ) from exc
        self.warnings += response.get("warnings") or []
        if not response.get("allowed"):
            status = response.get("status") or {}
            code = int(status.get("code") or 400)
            raise kmock.KubernetesError(
                status=code,
                reason=status.get("reason") or "BadRequest",
                message=f'admission webhook "{name}" denied the request: {status.get("message") or ""}',
            )

    async def _post(self, webhook: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
        config = webhook["clientConfig"]
        service = config["service"]
        host = f"{service['name']}.{service['namespace']}.svc"
        address = self.hosts[f"{host}:{service.get('port', 443)}"]
        context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
        timeout = aiohttp.ClientTimeout(total=float(webhook.get("timeoutSeconds") or 10))
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"https://{address}{service.get('path') or '/'}", json=review, ssl=context, server_hostname=host
            ) as answer,
        ):
            if answer.status != 200:
                raise ValueError(f"the webhook answered HTTP {answer.status}")
            body = await answer.json(content_type=None)
        response = body["response"]
        if response.get("uid") != review["request"]["uid"]:
            raise ValueError("the webhook answered another request's uid")
        return dict(response)
