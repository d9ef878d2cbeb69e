"""The trainer's job file: what the operator writes, what a trainer of another release still reads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.manifests import ROOT
from keras_operator.api import jobfile
from keras_operator.api.parse import InvalidResource, parse, read_documents
from keras_operator.api.report import parse_termination_message
from keras_operator.api.training_job import OutputSpec, TrainingSpec
from keras_operator.api.wire import TRAINER_CONFIG_ANNOTATION
from keras_operator.builders.training_manifests import build_job

UID = "0f6c1d2e-8a41-4f0e-9d55-1e2b3c4d5e6f"


def resource(**spec: Any) -> dict[str, Any]:
    doc = tiny_job("tiny", output={"uri": "pvc://models/tiny"}, **spec)
    doc["metadata"].update(namespace="ml", uid=UID, generation=4)
    return doc


def written(doc: dict[str, Any]) -> dict[str, Any]:
    """The job file as the pod reads it: the annotation, mounted by the downward API."""
    job = build_job(doc, parse(doc).spec, "img")
    (config,) = [json.loads(job["spec"]["template"]["metadata"]["annotations"][TRAINER_CONFIG_ANNOTATION])]
    return config


def test_the_operator_writes_a_versioned_job_file_with_what_the_trainer_needs() -> None:
    doc = resource(resources={"gpus": 1}, runPolicy={"backoffLimit": 1}, podTemplate={"spec": {"env": []}})
    config = written(doc)
    assert config["apiVersion"] == "kerasoperator.dev/trainer/v1"
    assert config["kind"] == "TrainerJob"
    assert config["run"] == {"id": UID, "name": "tiny", "namespace": "ml", "generation": 4}
    assert set(config) == {
        "apiVersion",
        "kind",
        "run",
        "backend",
        "model",
        "data",
        "training",
        "output",
        "distribution",
    }  # no runPolicy, podTemplate, resources: the pod already has them
    assert config["distribution"] == {"gpus": 1, "workers": 1}
    assert config["training"]["batchSize"] == 32  # defaults filled in: operator and trainer agree on them
    job, ignored = jobfile.read(config)
    assert ignored == []
    assert job.prefix() == f"pvc://models/tiny/runs/{UID}"
    spec = parse(doc).spec
    assert (job.model, job.data, job.training, job.output) == (spec.model, spec.data, spec.training, spec.output)


def test_the_job_file_says_how_many_workers_train_together() -> None:
    config = written(resource(backend="jax", distribution={"workers": 3}, resources={"gpus": 2}))
    assert config["distribution"] == {"gpus": 2, "workers": 3}
    job, ignored = jobfile.read(config)
    assert (job.distribution.workers, ignored) == (3, [])


def test_the_job_file_of_an_example_is_small(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["metadata"]["uid"] = UID
    text = build_job(doc, parse(doc).spec, "img")["spec"]["template"]["metadata"]["annotations"][
        TRAINER_CONFIG_ANNOTATION
    ]
    assert len(text.encode()) < 4 * 1024  # Kubernetes allows 256 KiB of annotations in all
    mounted = tmp_path / "job.yaml"
    mounted.write_text(text)
    (config,) = read_documents(mounted)
    assert jobfile.read(config)[0].run.id == UID


def _everywhere(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """`doc` with an unknown field added to every object a newer writer could extend."""
    doc = copy.deepcopy(doc)
    objects = [
        doc,
        doc["run"],
        doc["model"],
        doc["data"],
        doc["data"]["train"],
        doc["data"]["train"]["synthetic"],
        doc["training"],
        doc["training"]["earlyStopping"],
        doc["output"],
        doc["distribution"],
    ]
    for obj in objects:
        obj[key] = {"added": "later"}
    return doc


def test_an_older_reader_accepts_a_newer_file_with_fields_at_every_level() -> None:
    current = written(resource(training__earlyStopping={"patience": 2}))
    newer = _everywhere(current, "comesLater")
    newer["apiVersion"] = "kerasoperator.dev/trainer/v1"  # same major version: additions only
    job, ignored = jobfile.read(newer)
    assert job == jobfile.read(current)[0]
    assert sorted(ignored) == sorted(
        [
            "comesLater",
            "run.comesLater",
            "model.comesLater",
            "data.train.synthetic.comesLater",
            "data.train.comesLater",
            "data.comesLater",
            "training.earlyStopping.comesLater",
            "training.comesLater",
            "output.comesLater",
            "distribution.comesLater",
        ]
    )
    # A layer's and an optimizer's extra keys are Keras arguments, not newer fields: they stay.
    args = copy.deepcopy(current)
    args["model"]["layers"][0]["kernelInitializer"] = "zeros"
    args["training"]["optimizer"]["clipnorm"] = 1.0
    job, ignored = jobfile.read(args)
    assert ignored == []
    assert job.model.layers is not None
    assert job.model.layers[0].extra_args()["kernelInitializer"] == "zeros"
    assert job.training.optimizer.extra_args() == {"clipnorm": 1.0}


class _LaterTrainingSpec(TrainingSpec):
    """TrainingSpec as a later CRD may have it: a new field with a default, so every spec dumps it."""

    gradient_accumulation_steps: int = 1


class _LaterOutputSpec(OutputSpec):
    keep_last_checkpoints: int = 3


def test_later_defaulted_crd_fields_cannot_break_a_pinned_older_trainer() -> None:
    config = written(resource())
    # What a later operator writes: its spec types dump every default, the new ones included.
    config["training"] = _LaterTrainingSpec.model_validate(config["training"]).dump()
    config["output"] = _LaterOutputSpec.model_validate(config["output"]).dump()
    assert config["training"]["gradientAccumulationSteps"] == 1
    job, ignored = jobfile.read(config)
    assert ignored == ["training.gradientAccumulationSteps", "output.keepLastCheckpoints"]
    assert job.training.epochs == 2
    # The whole resource as the pod's config (the format before the job file) would have failed on it.
    old_format = resource()
    old_format["spec"]["training"]["gradientAccumulationSteps"] = 1
    with pytest.raises(InvalidResource, match=r"spec\.training\.gradientAccumulationSteps: unknown field"):
        parse(old_format)


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        (
            "kerasoperator.dev/trainer/v2",
            "TrainerJob",
            "apiVersion: kerasoperator.dev/trainer/v2 is a job file version",
        ),
        ("kerasoperator.dev/trainer/v3beta1", "TrainerJob", "use a trainer image as recent as the operator"),
        ("kerasoperator.dev/trainer/vX", "TrainerJob", "is a job file version this trainer does not read"),
        ("example.org/v1", "TrainerJob", "apiVersion/kind: expected kerasoperator.dev/trainer/v1 TrainerJob"),
        ("kerasoperator.dev/trainer/v1", "Pod", "apiVersion/kind: expected"),
    ],
)
def test_other_versions_and_kinds_are_refused_clearly(api_version: str, kind: str, expected: str) -> None:
    config = written(resource())
    config.update(apiVersion=api_version, kind=kind)
    with pytest.raises(InvalidResource, match=expected.replace(".", r"\.").replace("/", "/")):
        jobfile.read(config)


def test_a_trainer_refuses_a_newer_major_version_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keras_trainer import cli

    config = written(resource())
    config["apiVersion"] = "kerasoperator.dev/trainer/v2"
    (tmp_path / "job.yaml").write_text(json.dumps(config))
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    assert cli.main(["train", "--config", str(tmp_path / "job.yaml")]) == 2
    result = parse_termination_message((tmp_path / "term").read_text())
    assert result is not None
    assert (result.phase, result.reason) == ("Failed", "InvalidSpec")
    assert result.message.startswith("apiVersion: kerasoperator.dev/trainer/v2 is a job file version")
    assert "\n" not in result.message


def test_a_bad_value_in_the_job_file_names_the_spec_field() -> None:
    config = written(resource())
    config["training"]["epochs"] = 0
    with pytest.raises(InvalidResource, match=r"^spec\.training\.epochs: Input should be greater"):
        jobfile.read(config)
    config = written(resource())
    config["run"]["id"] = "../elsewhere"
    with pytest.raises(InvalidResource, match=r"^run\.id: String should match"):
        jobfile.read(config)


def test_a_whole_resource_is_still_read_as_before() -> None:
    doc = resource()
    job, ignored = jobfile.read(doc)
    assert (job.run.id, ignored) == (UID, [])
    del doc["metadata"]["uid"]
    assert jobfile.read(doc)[0].run.id == jobfile.LOCAL_RUN_ID
    doc["spec"]["training"]["epohcs"] = 3
    with pytest.raises(InvalidResource, match=r"spec\.training\.epohcs"):
        jobfile.read(doc)  # the resource format stays strict: it is the user's own file


def test_run_prefix() -> None:
    assert jobfile.run_prefix("s3://b/models/x/", UID) == f"s3://b/models/x/runs/{UID}"
    assert jobfile.run_prefix("runs/x", "local") == "runs/x/runs/local"
    for bad in ("", "..", "a/b", "../x", "-x"):
        with pytest.raises(ValueError, match="is not one path segment"):
            jobfile.run_prefix("s3://b", bad)


def test_a_huge_model_config_is_refused_naming_the_field() -> None:
    layers = [{"class_name": "Dense", "config": {"name": f"d{i}", "units": 4, "pad": "x" * 1000}} for i in range(300)]
    doc = resource(model={"config": {"class_name": "Sequential", "config": {"layers": layers}}})
    with pytest.raises(InvalidResource, match=r"^spec\.model\.config: too large for the trainer's job file") as err:
        build_job(doc, parse(doc).spec, "img")
    assert "spec.model.uri" in str(err.value)
    assert "\n" not in str(err.value)
    # The user's own pod annotations count against the same limit.
    doc = resource(podTemplate={"metadata": {"annotations": {"big": "x" * (256 * 1024 - 200)}}})
    with pytest.raises(InvalidResource, match=r"^spec\.podTemplate\.metadata\.annotations: too large"):
        build_job(doc, parse(doc).spec, "img")


def _hash(doc: dict[str, Any], run_id: str | None = None, output_uri: str | None = None) -> str:
    return jobfile.from_resource(parse(doc), run_id=run_id, output_uri=output_uri).spec_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"backend": "jax"},
        {"model__layers": [{"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dense", "units": 3}]},
        {"model__layers": [{"type": "Dense", "units": 16, "activation": "tanh"}, {"type": "Dense", "units": 3}]},
        {"data__train": {"synthetic": {"samples": 512, "inputShape": [8], "classes": 3}}},
        {"data__shuffle": False},
        {"training__epochs": 3},
        {"training__batchSize": 16},
        {"training__seed": 2},
        {"training__optimizer": {"name": "adam", "learningRate": 0.01}},
        {"training__loss": "categorical_crossentropy"},
        {"training__mixedPrecision": True},
        {"training__earlyStopping": {"patience": 1}},
        {"training__classWeight": {"0": 2.0}},
        {"training__callbacks": [{"name": "ReduceLROnPlateau", "args": {"patience": 1}}]},
        {"training__phases": [{"epochs": 1, "trainable": False}, {"epochs": 1}]},
        {"training__optimizer": {"name": "adam", "clipNorm": 1.0}},
        {
            "training__optimizer": {
                "name": "adam",
                "learningRate": {"name": "CosineDecay", "args": {"initialLearningRate": 0.1, "decaySteps": 9}},
            }
        },
    ],
)
def test_what_shapes_the_weights_changes_the_spec_hash(change: dict[str, Any]) -> None:
    """A checkpoint is resumed only by a training of the same hash (keras_trainer.runs.Workspace)."""
    assert _hash(resource(**change)) != _hash(resource())


def test_where_and_how_a_run_is_kept_leaves_the_spec_hash_alone() -> None:
    base = _hash(resource())
    assert len(base) == 16
    assert _hash(resource(training__batchSize=32)) == base  # a default written out is the same spec
    assert _hash(resource(output__uri="s3://b/m", output__formats=["savedmodel"], output__tensorboard=True)) == base
    assert _hash(resource(output__checkpoints=False)) == base
    assert _hash(resource(resources={"cpu": "2", "memory": "1Gi"}, runPolicy={"suspend": True})) == base
    assert _hash(resource(), run_id="another", output_uri="/elsewhere") == base
    renamed = resource()
    renamed["metadata"].update(name="other", namespace="team-b", uid="u-2", generation=9)
    assert _hash(renamed) == base
    job, _ = jobfile.read(written(resource()))
    assert job.spec_hash() == base  # the trainer, from the job file the operator wrote: the same hash


def test_a_resolved_training_job_ref_is_in_the_spec_hash() -> None:
    """The job file carries the model a trainingJobRef resolved to: another model is another training."""
    doc = resource()
    doc["spec"]["model"] = {"trainingJobRef": {"name": "base"}}
    spec = parse(doc).spec
    first = jobfile.from_spec(doc["metadata"], jobfile.starting_from(spec, "pvc://m/base/runs/a/model.keras"))
    second = jobfile.from_spec(doc["metadata"], jobfile.starting_from(spec, "pvc://m/base/runs/b/model.keras"))
    assert first.model.uri == "pvc://m/base/runs/a/model.keras"
    assert first.model.training_job_ref is None
    assert first.spec_hash() != second.spec_hash()
