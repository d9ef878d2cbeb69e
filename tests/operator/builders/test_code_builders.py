"""spec.code in the generated Job and Deployment: a ConfigMap mounted read-only at the reserved path,
a pvc:// claim mounted for a uri, the server told where the code is; validated against Kubernetes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT, validate_k8s
from keras_operator.api.common import CODE_DIR
from keras_operator.api.parse import parse
from keras_operator.api.wire import TRAINER_CONFIG_ANNOTATION
from keras_operator.builders.serving_manifests import build_deployment, server_args
from keras_operator.builders.training_manifests import build_job

IMAGE = "example.com/keras:1"


def _resource(example: str, spec: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
    doc["spec"].update(spec)
    return doc, parse(doc).spec


def _training(spec: dict[str, Any]) -> dict[str, Any]:
    doc, parsed = _resource("digits.yaml", {"model": {"callable": "models:build"}, **spec})
    job = build_job(doc, parsed, IMAGE)
    validate_k8s(job)
    return job


def _serving(spec: dict[str, Any]) -> dict[str, Any]:
    doc, parsed = _resource("digits-service.yaml", spec)
    deployment = build_deployment(doc, parsed, "s3://bucket/runs/r1/model.keras", IMAGE)
    validate_k8s(deployment)
    return deployment


def _pod(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = obj["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize(
    "spec",
    [{"code": {"configMap": "my-code"}}, {"model": {"callable": "models:build", "codeConfigMap": "my-code"}}],
    ids=["code.configMap", "model.codeConfigMap"],
)
def test_a_training_mounts_its_code_config_map_read_only_and_names_it_in_the_job_file(spec: dict[str, Any]) -> None:
    pod, container = _pod(_training(spec))
    assert {"name": "code", "configMap": {"name": "my-code"}} in pod["volumes"]
    assert {"name": "code", "mountPath": CODE_DIR, "readOnly": True} in container["volumeMounts"]
    assert {"name": "KERAS_TRAINER_CODE_DIR", "value": CODE_DIR} in container["env"]
    job_file = json.loads(_training(spec)["spec"]["template"]["metadata"]["annotations"][TRAINER_CONFIG_ANNOTATION])
    assert job_file["code"] == {"configMap": "my-code"}


def test_a_training_mounts_the_claim_of_a_pvc_code_uri_read_only() -> None:
    pod, container = _pod(_training({"code": {"uri": "pvc://shared/code/v3.tar.gz"}}))
    volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "shared")
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    assert mount["mountPath"] == "/mnt/pvc/shared"
    assert not any(v["name"] == "code" for v in pod["volumes"])


def test_code_in_the_image_needs_no_volume() -> None:
    pod, _ = _pod(_training({"code": {"path": "/app/code"}}))
    without, _ = _pod(_training({}))
    assert pod["volumes"] == without["volumes"]


def test_a_service_mounts_its_code_and_tells_the_server_where_it_is() -> None:
    code = {"configMap": "serve-code", "imports": ["layers"], "requirements": ["einops==0.8.0"]}
    pod, container = _pod(_serving({"code": code}))
    assert {"name": "code", "configMap": {"name": "serve-code"}} in pod["volumes"]
    assert {"name": "code", "mountPath": CODE_DIR, "readOnly": True} in container["volumeMounts"]
    args = container["args"]
    assert args[args.index("--code-dir") + 1] == CODE_DIR
    assert args[args.index("--code-import") + 1] == "layers"
    assert args[args.index("--code-requirement") + 1] == "einops==0.8.0"


def test_a_service_fetches_a_code_uri_and_mounts_only_a_claim() -> None:
    pod, container = _pod(_serving({"code": {"uri": "pvc://shared/code"}}))
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "shared" for v in pod["volumes"])
    assert container["args"][container["args"].index("--code-dir") + 1] == "pvc://shared/code"


def test_a_service_without_code_gets_no_code_flags() -> None:
    # The code recorded with a run is found by the server beside the model: no flag, no volume.
    _doc, parsed = _resource("digits-service.yaml", {})
    assert not any(a.startswith("--code") for a in server_args("digits", parsed, "/m/model.keras"))
    pod, _ = _pod(_serving({}))
    assert not any(v["name"] == "code" for v in pod["volumes"])
