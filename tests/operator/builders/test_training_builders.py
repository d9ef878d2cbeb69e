"""The Job built for a KerasTrainingJob: contents, security, and real Kubernetes schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from helpers.manifests import ROOT, cel_errors, crd_schema, validate_k8s
from keras_operator.api import jobfile
from keras_operator.api.parse import InvalidResource, parse, read_documents
from keras_operator.api.training_job import COORDINATOR_PORT
from keras_operator.api.wire import SPEC_HASH_ANNOTATION
from keras_operator.builders.metadata import spec_hash
from keras_operator.builders.training_manifests import build_job, build_worker_service

IMAGE = "example.org/trainer:1"


def owner(spec_overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="1234-5678", generation=3)
    for key, value in (spec_overrides or {}).items():
        doc["spec"][key] = value
    job = parse(doc)
    return doc, job.spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_job_runs_the_trainer_with_owner_and_labels() -> None:
    doc, spec = owner()
    job = build_job(doc, spec, IMAGE)
    assert job["metadata"]["name"] == "digits-train"
    assert job["metadata"]["namespace"] == "ml"
    ref = job["metadata"]["ownerReferences"][0]
    assert ref == {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasTrainingJob",
        "name": "digits",
        "uid": "1234-5678",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["metadata"]["labels"]["kerasoperator.dev/training-job"] == "digits"
    assert job["spec"]["template"]["metadata"]["labels"]["kerasoperator.dev/training-job"] == "digits"
    c = container(job)
    assert c["image"] == IMAGE
    assert c["command"] == ["keras-trainer"]
    assert c["args"] == ["train", "--config", "/etc/keras-operator/job.yaml"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["suspend"] is False
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pods_are_restricted() -> None:
    doc, spec = owner()
    pod = build_job(doc, spec, IMAGE)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


def test_gpu_requests_and_overridable_resource_name() -> None:
    doc, spec = owner({"resources": {"gpus": 2, "cpu": "4", "memory": "8Gi"}})
    res = container(build_job(doc, spec, IMAGE))["resources"]
    assert res["limits"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}
    assert res["requests"] == res["limits"]
    doc, spec = owner({"resources": {"gpus": 1, "gpuResourceName": "amd.com/gpu"}})
    assert container(build_job(doc, spec, IMAGE))["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_run_policy_and_queue() -> None:
    doc, spec = owner(
        {
            "runPolicy": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 60,
                "ttlSecondsAfterFinished": 30,
                "queueName": "team-a",
                "priorityClassName": "high",
            }
        }
    )
    job = build_job(doc, spec, IMAGE)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 60
    # The operator deletes the Job itself once the status holds the result (controllers/training_reconciler.py).
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert job["spec"]["suspend"] is True  # Kueue admits it, not us
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "high"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [2]


def test_workload_priority_class_labels_the_job_for_kueue() -> None:
    policy = {"queueName": "team-a", "workloadPriorityClass": "urgent", "priorityClassName": "high"}
    doc, spec = owner({"runPolicy": policy})
    job = build_job(doc, spec, IMAGE)
    validate_k8s(job)
    # Kueue gives the Workload the priority of the WorkloadPriorityClass named by this Job label.
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/priority-class" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "high"  # the pods' own, unchanged
    doc, spec = owner({"runPolicy": {"queueName": "team-a"}})
    assert "kueue.x-k8s.io/priority-class" not in build_job(doc, spec, IMAGE)["metadata"]["labels"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"workloadPriorityClass": "urgent"}, "queueName is required when workloadPriorityClass is set"),
        ({"queueName": "q", "workloadPriorityClass": "Not A Label"}, "spec.runPolicy.workloadPriorityClass"),
    ],
)
def test_workload_priority_class_needs_a_queue_and_a_label_value(policy: dict[str, Any], expected: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["spec"]["runPolicy"] = policy
    schema = crd_schema("kerastrainingjobs")
    assert cel_errors(doc, schema) or list(jsonschema.Draft4Validator(schema).iter_errors(doc)), "the CRD took it"
    with pytest.raises(InvalidResource, match=re.escape(expected)):
        parse(doc)


def test_pvc_uris_are_mounted_where_the_trainer_looks() -> None:
    doc, spec = owner({"data": {"train": {"uri": "pvc://datasets/digits/train.npz"}}})
    job = build_job(doc, spec, IMAGE)
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) == {"datasets", "models"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
    assert mounts["/mnt/pvc/models"]["readOnly"] is False  # the output goes there
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KERAS_OPERATOR_PVC_ROOT"] == "/mnt/pvc"


def test_pod_template_is_merged() -> None:
    template = {
        "metadata": {
            "labels": {"team": "vision", "kerasoperator.dev/training-job": "hijack"},
            "annotations": {"a": "b"},
        },
        "spec": {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "env": [{"name": "KERAS_BACKEND", "value": "jax"}, {"name": "EXTRA", "value": "1"}],
            "envFrom": [{"secretRef": {"name": "s3-creds"}}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "trainer",
        },
    }
    doc, spec = owner({"podTemplate": template})
    tpl = build_job(doc, spec, IMAGE)["spec"]["template"]
    pod = tpl["spec"]
    assert tpl["metadata"]["labels"]["team"] == "vision"
    assert tpl["metadata"]["labels"]["kerasoperator.dev/training-job"] == "digits"  # ours win
    assert tpl["metadata"]["annotations"]["a"] == "b"  # beside the trainer config
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "trainer"
    assert pod["automountServiceAccountToken"] is True
    c = pod["containers"][0]
    env = [e for e in c["env"] if e["name"] == "KERAS_BACKEND"]
    assert env == [{"name": "KERAS_BACKEND", "value": "jax"}]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]


def test_the_pod_carries_the_normalised_spec_where_the_trainer_reads_it(tmp_path: Path) -> None:
    doc, spec = owner(
        {
            "podTemplate": {"metadata": {"annotations": {"kerasoperator.dev/trainer-config": "x"}}},
            # numbers YAML 1.1 would read as strings: the trainer must get them as numbers
            "training": {"epochs": 20, "optimizer": {"name": "adam", "learningRate": 1e-05, "epsilon": 1e-07}},
        }
    )
    template = build_job(doc, spec, IMAGE)["spec"]["template"]
    mounted = tmp_path / "job.yaml"  # as the downward API writes it
    mounted.write_text(template["metadata"]["annotations"]["kerasoperator.dev/trainer-config"])
    (config,) = read_documents(mounted)
    assert config["apiVersion"] == "kerasoperator.dev/trainer/v1"  # the trainer's own job file
    assert config["training"]["optimizer"] == {"name": "adam", "learningRate": 1e-05, "epsilon": 1e-07}
    assert config["run"] == {"id": "1234-5678", "name": "digits", "namespace": "ml", "generation": 3}
    assert config["training"]["epochs"] == 20
    assert config["training"]["batchSize"] == 32  # defaults filled in
    job, ignored = jobfile.read(config)
    assert ignored == []
    # The user's annotation of the same name did not win.
    assert (job.model, job.data, job.training, job.output) == (spec.model, spec.data, spec.training, spec.output)
    container = template["spec"]["containers"][0]
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "config")
    (item,) = volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['kerasoperator.dev/trainer-config']"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"][-1] == f"{mount['mountPath']}/{item['path']}"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"resources": {"gpus": 1, "cpu": "500m", "memory": 1073741824}},
        {"runPolicy": {"queueName": "q", "activeDeadlineSeconds": 10, "ttlSecondsAfterFinished": 5}},
        {"model": {"callable": "models:build", "codeConfigMap": "code"}},
        {
            "podTemplate": {
                "metadata": {"labels": {"x": "y"}},
                "spec": {
                    "nodeSelector": {"a": "b"},
                    "tolerations": [{"key": "k", "operator": "Exists"}],
                    "env": [{"name": "A", "value": "B"}],
                    "serviceAccountName": "sa",
                },
            }
        },
    ],
)
def test_manifests_validate_against_kubernetes(overrides: dict[str, Any]) -> None:
    doc, spec = owner(overrides)
    validate_k8s(build_job(doc, spec, IMAGE))


# --- several workers (spec.distribution.workers): one Indexed Job, a headless Service ---


def workers_spec(workers: int, **more: Any) -> dict[str, Any]:
    return {"backend": "jax", "distribution": {"workers": workers}, **more}


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(job)["env"]}


def test_one_worker_builds_the_one_pod_job_as_before() -> None:
    doc, spec = owner()
    job = build_job(doc, spec, IMAGE)
    doc1, spec1 = owner({"distribution": {"workers": 1}})
    assert build_job(doc1, spec1, IMAGE) == job
    for absent in ("completionMode", "completions", "parallelism", "successPolicy"):
        assert absent not in job["spec"]
    assert "subdomain" not in job["spec"]["template"]["spec"]
    assert "ports" not in container(job)
    assert not [name for name in env_of(job) if name.startswith("KERAS_DISTRIBUTION_")]
    assert build_worker_service(doc, spec) is None
    # The hash a Job made before spec.distribution existed carries: such Jobs still match their spec.
    before = spec.dump()
    before["runPolicy"].pop("suspend", None)
    before.pop("distribution")
    assert job["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(before)


def test_workers_form_one_indexed_job_that_succeeds_with_worker_0() -> None:
    doc, spec = owner(workers_spec(3, runPolicy={"backoffLimit": 2}))
    job = build_job(doc, spec, IMAGE)["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
    assert job["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    # One group restart costs a pod failure per worker: backoffLimit counts group restarts.
    assert job["backoffLimit"] == 6
    rules = job["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore"]
    assert rules[0]["onExitCodes"]["values"] == [2]
    assert job["template"]["spec"]["subdomain"] == "digits-workers"
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_each_worker_finds_worker_0_and_its_own_index() -> None:
    doc, spec = owner(workers_spec(2))
    job = build_job(doc, spec, IMAGE)
    env = env_of(job)
    # An Indexed Job's pod is named JOB-INDEX; the subdomain's Service makes it JOB-INDEX.SERVICE.NS.svc.
    assert (
        env["KERAS_DISTRIBUTION_JOB_ADDRESSES"]["value"] == f"digits-train-0.digits-workers.ml.svc:{COORDINATOR_PORT}"
    )
    assert env["KERAS_DISTRIBUTION_NUM_PROCESSES"]["value"] == "2"
    assert env["KERAS_DISTRIBUTION_PROCESS_ID"] == {
        "name": "KERAS_DISTRIBUTION_PROCESS_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}},
    }
    assert env["KERAS_BACKEND"]["value"] == "jax"
    assert container(job)["ports"] == [{"name": "coordinator", "containerPort": 8476, "protocol": "TCP"}]
    config = json.loads(job["spec"]["template"]["metadata"]["annotations"]["kerasoperator.dev/trainer-config"])
    assert config["distribution"] == {"gpus": 0, "workers": 2}


def test_the_worker_service_names_the_job_pods() -> None:
    doc, spec = owner(workers_spec(2))
    job = build_job(doc, spec, IMAGE)
    service = build_worker_service(doc, spec)
    assert service is not None
    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
    assert service["metadata"]["namespace"] == "ml"
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    svc = service["spec"]
    assert svc["clusterIP"] == "None"  # headless: DNS names the pods themselves
    assert svc["publishNotReadyAddresses"] is True  # workers look each other up before they are ready
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"]
    assert all(pod_labels.get(k) == v for k, v in svc["selector"].items())
    (port,) = svc["ports"]
    assert (port["port"], port["targetPort"]) == (COORDINATOR_PORT, "coordinator")
    assert port["targetPort"] in {p["name"] for p in container(job)["ports"]}
    # Another resource's Service differs: two trainings in a namespace never share their names.
    other, other_spec = owner(workers_spec(2))
    other["metadata"]["name"] = "other"
    assert build_worker_service(other, other_spec)["spec"]["selector"] != svc["selector"]


def test_multi_worker_manifests_validate_against_kubernetes() -> None:
    doc, spec = owner(
        workers_spec(4, resources={"gpus": 2}, runPolicy={"queueName": "q"}, podTemplate={"spec": {"env": []}})
    )
    service = build_worker_service(doc, spec)
    assert service is not None
    validate_k8s(build_job(doc, spec, IMAGE))
    validate_k8s(service)


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        ({"distribution": {"workers": 2}}, True),  # tensorflow, the default backend
        ({"backend": "tensorflow", "distribution": {"workers": 2}}, True),
        ({"backend": "torch", "distribution": {"workers": 3}}, True),
        ({"backend": "jax", "distribution": {"workers": 2}}, False),
        ({"backend": "tensorflow", "distribution": {"workers": 1}}, False),
        ({"backend": "torch", "distribution": {}}, False),
    ],
)
def test_several_workers_need_jax_in_cel_and_python(spec: dict[str, Any], refused: bool) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["spec"].update(spec)
    cel = cel_errors(doc["spec"], crd_schema("kerastrainingjobs")["properties"]["spec"])
    assert bool(cel) == refused, cel
    assert all("distribution.workers above 1 needs backend jax" in e for e in cel)
    if refused:
        with pytest.raises(InvalidResource, match=re.escape("distribution.workers above 1 needs backend jax")):
            parse(doc)
    else:
        parse(doc)


def test_zero_workers_is_refused() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["spec"].update(workers_spec(0))
    with pytest.raises(InvalidResource, match=re.escape("spec.distribution.workers")):
        parse(doc)
    schema = crd_schema("kerastrainingjobs")["properties"]["spec"]["properties"]["distribution"]
    assert schema["properties"]["workers"]["minimum"] == 1


@pytest.mark.parametrize(
    ("checkpoints", "grace"),
    [
        (True, 90),  # the default saveSeconds 60 + 30
        ({"every": {"steps": 100}, "saveSeconds": 300}, 330),
        (False, None),  # no checkpoint to save: the Kubernetes default
    ],
)
def test_the_pods_grace_period_leaves_time_for_the_sigterm_checkpoint(checkpoints: Any, grace: int | None) -> None:
    doc, _ = owner()
    doc["spec"].setdefault("output", {})["checkpoints"] = checkpoints
    spec = parse(doc).spec
    job = build_job(doc, spec, IMAGE)
    validate_k8s(job)
    assert job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") == grace
