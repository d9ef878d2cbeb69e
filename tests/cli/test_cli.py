"""kerasop run / render: output and exit codes (0 Succeeded, 1 Failed, 2 invalid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers.jobs import tiny_job, write_job
from helpers.manifests import ROOT, validate_k8s
from kerasop import cli

pytestmark = pytest.mark.usefixtures("local_pvc_root")


@pytest.mark.slow
def test_run_prints_the_final_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", write_job(tmp_path, tiny_job("local")), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    status = json.loads(out)["status"]
    assert status["phase"] == "Succeeded"
    assert status["progress"] == {"epoch": 2, "epochs": 2, "percent": 100, "secondsRemaining": 0}
    # No output.uri: ./runs/NAME, and in it the folder of run "local" (kerasop run's default run id).
    assert status["modelUri"] == "runs/local/runs/local/model.keras"
    assert (tmp_path / "runs" / "local" / "runs" / "local" / "model.keras").exists()
    assert "epoch 1/2 " in err  # one plain line per epoch when not on a terminal
    assert "epoch 2/2 " in err


@pytest.mark.slow
def test_run_maps_pvc_uris_to_the_local_pvc_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", write_job(tmp_path, tiny_job("p", output={"uri": "pvc://models/p"}))])
    out, _ = capsys.readouterr()
    assert code == 0
    assert yaml.safe_load(out)["status"]["modelUri"] == "pvc://models/p/runs/local/model.keras"
    assert (tmp_path / "pvc" / "models" / "p" / "runs" / "local" / "model.keras").exists()


def test_run_invalid_resource_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", write_job(tmp_path, tiny_job(training__batchSize=0))])
    _, err = capsys.readouterr()
    assert code == 2
    assert "spec.training.batchSize" in err


@pytest.mark.slow
def test_run_training_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((20, 8), "float32"), y=np.full(20, 7))  # 7 classes > 3 outputs
    code = cli.main(["run", write_job(tmp_path, tiny_job(data={"train": {"uri": str(tmp_path / "d.npz")}}))])
    out, _ = capsys.readouterr()
    assert code == 1
    status = yaml.safe_load(out)["status"]
    assert status["phase"] == "Failed"
    assert status["message"].startswith("training failed:")


def test_render_prints_valid_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["render", str(ROOT / "examples" / "digits.yaml"), "-n", "ml"])
    out, _ = capsys.readouterr()
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objects] == ["Job"]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "ml"
        validate_k8s(obj)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("kind: [", "not valid YAML"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "apiVersion: expected kerasoperator.dev/v1alpha1"),
        (
            "apiVersion: kerasoperator.dev/v1alpha1\nkind: KerasTrainingJob\nmetadata: {name: x}\nspec: hello\n",
            "spec: Input should be",
        ),
    ],
)
def test_render_rejects_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(content)
    assert cli.main(["render", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_render_a_service_with_its_job(capsys: pytest.CaptureFixture[str]) -> None:
    both = (
        (ROOT / "examples" / "digits.yaml").read_text()
        + "\n---\n"
        + (ROOT / "examples" / "digits-service.yaml").read_text()
    )
    path = Path("both.yaml")
    path.write_text(both)
    assert cli.main(["render", str(path)]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["kind"] for o in objects] == ["Job", "Service", "Deployment", "HorizontalPodAutoscaler"]
    args = objects[2]["spec"]["template"]["spec"]["containers"][0]["args"]
    # Each run writes under its resource's uid, unknown before it is applied: the operator fills it in.
    assert args[args.index("--model-uri") + 1] == "<status.modelUri of KerasTrainingJob digits>"
    for obj in objects:
        validate_k8s(obj)


def test_serve_without_a_trained_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", str(ROOT / "examples" / "digits-service.yaml")]) == 2
    assert "spec.model.trainingJobRef: no trained model found" in capsys.readouterr().err


def test_a_code_config_map_comes_from_the_same_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kerasop writes a ConfigMap of the file out for spec.code.configMap; without one it says so at once."""
    config_map, training, _ = yaml.safe_load_all((ROOT / "examples" / "custom-code.yaml").read_text())
    monkeypatch.delenv("KERAS_TRAINER_CODE_DIR", raising=False)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(training))
    assert cli.main(["run", str(path)]) == 2
    assert "spec.code.configMap: no ConfigMap 'digits-custom-code' in" in capsys.readouterr().err
    folder = cli.local_code_dir(str(ROOT / "examples" / "custom-code.yaml"), "digits-custom-code")
    assert folder is not None
    assert {p.name: p.read_text() for p in folder.iterdir()} == config_map["data"]
    # kerasop serve: a service's own code ConfigMap, which its file must hold too.
    service = {**yaml.safe_load((ROOT / "examples" / "digits-service.yaml").read_text())}
    service["spec"]["code"] = {"configMap": "serve-code"}
    path.write_text(yaml.safe_dump(service))
    assert cli.main(["serve", str(path), "--model-uri", str(tmp_path / "m.keras")]) == 2
    assert "spec.code.configMap: no ConfigMap 'serve-code' in" in capsys.readouterr().err
    config_map["data"] = {"../escape.py": "x = 1\n"}
    path.write_text(yaml.safe_dump_all([config_map, training]))
    assert cli.main(["run", str(path)]) == 2
    assert "data.../escape.py is not a file of code" in capsys.readouterr().err
    assert not (tmp_path.parent / "escape.py").exists()


@pytest.mark.slow
def test_run_keeps_stdout_for_the_status_even_when_libraries_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from keras_common import logs

    logs.configure("json", "info", stream="stdout", stdlib=True)  # as an operator in this process would
    try:
        code = cli.main(
            ["run", write_job(tmp_path, tiny_job("quiet", output={"formats": ["savedmodel"]})), "-o", "json"]
        )
        out, _ = capsys.readouterr()
    finally:
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    assert code == 0
    assert json.loads(out)["status"]["phase"] == "Succeeded"  # nothing but the status on stdout
