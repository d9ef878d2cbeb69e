"""Hostile and careless specs (issue #13): every input path fails closed, with one line naming the field.

Each case goes through `kerasop render` (exit 2, one `error:` line, never a traceback) and through the
parse functions the reconcile loop uses (InvalidResource, which it turns into InvalidSpec). A fuzz run
mutates the examples and holds parse to the same contract.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.fake_api import FakeApi
from helpers.manifests import ROOT
from keras_operator.api import common
from keras_operator.api.limits import INT32_MAX, MAX_ALIASES, MAX_DEPTH
from keras_operator.api.parse import InvalidResource, parse, parse_serving_spec, parse_training_spec
from keras_operator.builders.serving_manifests import build_deployment
from keras_operator.builders.training_manifests import ProgressEndpoint, build_job
from kerasop import cli

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _doc(name: str, index: int = 0) -> dict[str, Any]:
    return list(yaml.safe_load_all((ROOT / "examples" / name).read_text()))[index]


def training() -> dict[str, Any]:
    return _doc("digits.yaml")


def service() -> dict[str, Any]:
    doc = _doc("digits-service.yaml")
    doc["spec"]["model"] = {"uri": "pvc://models/digits/model.keras"}
    return doc


def render(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "in.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = cli.main(["render", str(path)])
    return code, capsys.readouterr().err


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def assert_refused(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str], field: str) -> str:
    code, err = render(tmp_path, text, capsys)
    assert code == cli.EXIT_INVALID, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert field in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target.setdefault(part, {}) if not part.isdigit() else target[int(part)]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


# (document, the field the error must name): through render, and through parse of the document.
T, S = training, service
CASES: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    # strict types
    ("bool epochs", lambda: _set(T(), "spec.training.epochs", True), "spec.training.epochs"),
    ("string epochs", lambda: _set(T(), "spec.training.epochs", "5"), "spec.training.epochs"),
    ("int beyond int64", lambda: _set(T(), "spec.training.epochs", 2**64), "spec.training.epochs"),
    ("huge int in layer args", lambda: _set(T(), "spec.model.layers.0.units", -(2**70)), "spec.model.layers[0].units"),
    ("replicas beyond int32", lambda: _set(S(), "spec.replicas", INT32_MAX + 1), "spec.replicas"),
    (
        "maxReplicas beyond int32",
        lambda: _set(S(), "spec.autoscaling.maxReplicas", 2**40),
        "spec.autoscaling.maxReplicas",
    ),
    (
        "backoffLimit beyond int32",
        lambda: _set(T(), "spec.runPolicy.backoffLimit", 2**31),
        "spec.runPolicy.backoffLimit",
    ),
    ("ttl beyond int32", lambda: _set(T(), "spec.runPolicy.ttlSecondsAfterFinished", 2**33), "ttlSecondsAfterFinished"),
    (
        "backoffLimit x workers beyond int32",
        lambda: _set(
            _set(_set(T(), "spec.backend", "jax"), "spec.distribution", {"workers": 1000}),
            "spec.runPolicy.backoffLimit",
            INT32_MAX // 10,
        ),
        "runPolicy.backoffLimit times distribution.workers",
    ),
    (
        "workers beyond an Indexed Job",
        lambda: _set(T(), "spec.distribution.workers", 100_001),
        "spec.distribution.workers",
    ),
    ("negative cpu", lambda: _set(T(), "spec.resources.cpu", -1), "spec.resources.cpu"),
    ("negative memory string", lambda: _set(S(), "spec.resources.memory", "-1Gi"), "spec.resources.memory"),
    ("bool gpus", lambda: _set(T(), "spec.resources.gpus", True), "spec.resources.gpus"),
    (
        "infinite learning rate",
        lambda: _set(T(), "spec.training.optimizer", {"learningRate": float("inf")}),
        "spec.training.optimizer",
    ),
    (
        "NaN latency",
        lambda: _set(S(), "spec.server.batching.maxLatencyMs", float("nan")),
        "spec.server.batching.maxLatencyMs",
    ),
    ("string for a bool", lambda: _set(T(), "spec.data.shuffle", "yes"), "spec.data.shuffle"),
    # camelCase only
    (
        "snake_case field",
        lambda: _set(T(), "spec.training.batch_size", 8),
        "spec.training.batch_size: unknown field (did you mean batchSize?)",
    ),
    (
        "snake_case section",
        lambda: _set(T(), "spec.run_policy", {}),
        "spec.run_policy: unknown field (did you mean runPolicy?)",
    ),
    (
        "snake_case in service",
        lambda: _set(S(), "spec.model_name", "x"),
        "spec.model_name: unknown field (did you mean modelName?)",
    ),
    # names the API server would refuse
    ("uppercase name", lambda: _set(T(), "metadata.name", "Digits"), "metadata.name"),
    ("long name", lambda: _set(T(), "metadata.name", "a" * 54), "metadata.name"),
    ("service name starting with a digit", lambda: _set(S(), "metadata.name", "1digits"), "metadata.name"),
    (
        "workers Service of a name starting with a digit",
        lambda: _set(
            _set(_set(T(), "metadata.name", "9lives"), "spec.backend", "jax"), "spec.distribution", {"workers": 2}
        ),
        "metadata.name",
    ),
    (
        "worker hostnames too long",
        lambda: _set(
            _set(_set(T(), "metadata.name", "a" * 53), "spec.backend", "jax"), "spec.distribution", {"workers": 10_000}
        ),
        "metadata.name",
    ),
    ("bad namespace", lambda: _set(T(), "metadata.namespace", "Team_A"), "metadata.namespace"),
    ("claim name", lambda: _set(T(), "spec.output.uri", "pvc://My_Models/digits"), "spec.output.uri"),
    ("claim of a data uri", lambda: _set(T(), "spec.data.train", {"uri": "PVC://x y/d.npz"}), "spec.data.train.uri"),
    ("claim of a served model", lambda: _set(S(), "spec.model.uri", "pvc:///no-claim"), "spec.model.uri"),
    ("unparseable uri", lambda: _set(T(), "spec.model", {"uri": "http://[::1/m.keras"}), "spec.model.uri"),
    (
        "service account",
        lambda: _set(T(), "spec.podTemplate", {"spec": {"serviceAccountName": "Bad Name"}}),
        "spec.podTemplate.spec.serviceAccountName",
    ),
    (
        "priority class",
        lambda: _set(T(), "spec.runPolicy.priorityClassName", "High!"),
        "spec.runPolicy.priorityClassName",
    ),
    (
        "pod priority class",
        lambda: _set(S(), "spec.podTemplate", {"spec": {"priorityClassName": "a" * 254}}),
        "spec.podTemplate.spec.priorityClassName",
    ),
    (
        "runtime class empty",
        lambda: _set(S(), "spec.podTemplate", {"spec": {"runtimeClassName": ""}}),
        "spec.podTemplate.spec.runtimeClassName",
    ),
    ("queue name", lambda: _set(T(), "spec.runPolicy.queueName", "team queue"), "spec.runPolicy.queueName"),
    (
        "code ConfigMap",
        lambda: _set(T(), "spec.model", {"callable": "m:f", "codeConfigMap": "Code_Map"}),
        "spec.model.codeConfigMap",
    ),
    ("code path", lambda: _set(T(), "spec.code", {"path": "../code"}), "spec.code.path"),
    # A newline in a key is shown escaped: the message stays one line (found by the fuzz test).
    ("newline key", lambda: _set(T(), "metadata.name", {"\n": 2**63}), "metadata.name.\\n: "),
    (
        "label value",
        lambda: _set(T(), "spec.podTemplate", {"metadata": {"labels": {"team": "a" * 64}}}),
        "spec.podTemplate.metadata.labels.team",
    ),
    (
        "label key",
        lambda: _set(S(), "spec.podTemplate", {"metadata": {"labels": {"bad key": "x"}}}),
        "spec.podTemplate.metadata.labels",
    ),
    (
        "annotation key",
        lambda: _set(T(), "spec.podTemplate", {"metadata": {"annotations": {"-x": "y"}}}),
        "spec.podTemplate.metadata.annotations",
    ),
    (
        "node selector value",
        lambda: _set(T(), "spec.podTemplate", {"spec": {"nodeSelector": {"pool": "gpu pool"}}}),
        "spec.podTemplate.spec.nodeSelector.pool",
    ),
    (
        "trainingJobRef name",
        lambda: _set(S(), "spec.model", {"trainingJobRef": {"name": "Digits"}}),
        "spec.model.trainingJobRef.name",
    ),
    ("image with spaces", lambda: _set(S(), "spec.image", "my image:1"), "spec.image"),
    (
        "gpu resource name",
        lambda: _set(T(), "spec.resources.gpuResourceName", "nvidia gpu"),
        "spec.resources.gpuResourceName",
    ),
    # the operator's own volumes and mounts
    (
        "volume named like ours",
        lambda: _set(T(), "spec.podTemplate", {"spec": {"volumes": [{"name": "config", "emptyDir": {}}]}}),
        "spec.podTemplate.spec: volumes[0].name",
    ),
    (
        "volume named like a claim's",
        lambda: _set(S(), "spec.podTemplate", {"spec": {"volumes": [{"name": "pvc-0", "emptyDir": {}}]}}),
        "volumes[0].name",
    ),
    (
        "mount over the scratch dir",
        lambda: _set(S(), "spec.podTemplate", {"spec": {"volumeMounts": [{"name": "x", "mountPath": "/tmp/"}]}}),
        "volumeMounts[0].mountPath",
    ),
    (
        "mount over a claim",
        lambda: _set(
            T(), "spec.podTemplate", {"spec": {"volumeMounts": [{"name": "x", "mountPath": "/mnt/pvc/models"}]}}
        ),
        "volumeMounts[0].mountPath",
    ),
    (
        "mount over the job file",
        lambda: _set(
            T(), "spec.podTemplate", {"spec": {"volumeMounts": [{"name": "x", "mountPath": "/etc/keras-operator"}]}}
        ),
        "volumeMounts[0].mountPath",
    ),
    # nesting
    (
        "deep layer args",
        lambda: _set(T(), "spec.model.layers.0.kernel_initializer", _deep(MAX_DEPTH + 50)),
        "spec.model.layers[0].kernel_initializer.a",
    ),
    ("deep config", lambda: _set(T(), "spec.model", {"config": _deep(500)}), "spec.model.config.a.a"),
    (
        "deep affinity",
        lambda: _set(S(), "spec.podTemplate", {"spec": {"affinity": _deep(300)}}),
        "spec.podTemplate.spec.affinity",
    ),
]


def _text(doc: dict[str, Any]) -> str:
    """JSON, which `kerasop render` reads too (and PyYAML cannot write 500 levels deep); YAML for NaN
    and infinities, which JSON has no form for."""
    try:
        return json.dumps(doc, allow_nan=False)
    except ValueError:
        return dump(doc)


@pytest.mark.parametrize(("case", "make", "field"), CASES, ids=[c[0] for c in CASES])
def test_render_refuses_with_one_line_naming_the_field(
    case: str, make: Callable[[], dict[str, Any]], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    assert_refused(tmp_path, _text(make()), capsys, field)


@pytest.mark.parametrize(("case", "make", "field"), CASES, ids=[c[0] for c in CASES])
def test_parse_refuses_naming_the_field(case: str, make: Callable[[], dict[str, Any]], field: str) -> None:
    doc = make()
    with pytest.raises(InvalidResource) as raised:
        parse(doc)
    assert field in str(raised.value)
    # The reconcile loop parses the spec alone: the spec's own mistakes are InvalidResource there too.
    spec_parse = parse_training_spec if doc["kind"] == "KerasTrainingJob" else parse_serving_spec
    if field.startswith("spec"):
        with pytest.raises(InvalidResource, match=re.escape(field)):
            spec_parse(doc["spec"])


def test_the_examples_still_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for example in EXAMPLES:
        code = cli.main(["render", str(example)])
        assert code == 0, (example, capsys.readouterr().err)
    capsys.readouterr()


def test_what_kubernetes_allows_stays_allowed() -> None:
    doc = training()
    doc["spec"]["runPolicy"] = {"priorityClassName": "", "queueName": "", "backoffLimit": INT32_MAX}
    doc["spec"]["podTemplate"] = {
        "metadata": {"labels": {"example.com/team": "a-b_c.d", "empty": ""}, "annotations": {"a.b/c": "x" * 1000}},
        "spec": {
            "serviceAccountName": "",
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/tmp/cache"}, {"name": "cache", "mountPath": "/mnt/x"}],
        },
    }
    doc["spec"]["model"]["layers"][0]["name"] = "2024-01-01"  # a string, as Kubernetes reads it
    parse(doc)


# --- files: encodings, syntax, size, aliases -------------------------------------------------------------


def test_binary_and_non_utf8_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", capsys, "not UTF-8")
    assert_refused(tmp_path, "kind: x\nname: caf\xe9\n".encode("latin-1"), capsys, "not UTF-8")
    assert_refused(tmp_path, b"apiVersion: v1\x00\x01\n", capsys, "not valid YAML")


def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_refused(tmp_path, "apiVersion: x\nspec:\n  a: [1, 2\n  b: 3\n", capsys, "line ")
    assert re.search(r"line \d+, column \d+", line)
    assert_refused(tmp_path, "a: b: c\n", capsys, "line 1, column 5")
    assert_refused(tmp_path, "a: !!binary aGVsbG8=\n", capsys, "no JSON form")
    assert_refused(tmp_path, "a: !!python/object:os.system {}\n", capsys, "line 1")
    assert_refused(tmp_path, "? [a, b]\n: 1\n", capsys, "line 1")
    assert_refused(tmp_path, "- 1\n- 2\n", capsys, "must be a mapping")


def test_deep_documents_stop_before_parsing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _set(training(), "spec.model.layers.0.args", "DEEP")
    line = assert_refused(tmp_path, dump(doc).replace("DEEP", "[" * 300 + "]" * 300), capsys, "nested more than")
    assert re.search(r"line \d+, column \d+", line)  # YAML is refused while read, before any value exists
    assert_refused(tmp_path, "a: " + "[" * 50_000 + "]" * 50_000 + "\n", capsys, f"nested more than {MAX_DEPTH}")
    assert_refused(tmp_path, "{" + '"a":{' * 50_000 + "}" * 50_001, capsys, f"nested more than {MAX_DEPTH}")
    assert_refused(tmp_path, "".join("  " * i + "a:\n" for i in range(300)), capsys, f"nested more than {MAX_DEPTH}")


def test_big_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(tmp_path, "a: " + "x" * (1024 * 1024) + "\n", capsys, "larger than 1024 KiB")


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bombs_fail_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    text = _bomb(9)  # 10**9 values in about 1 KB
    assert len(text) < 1500
    assert_refused(tmp_path, text, capsys, "once YAML aliases are expanded")
    many = "a: &a x\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    assert_refused(tmp_path, many, capsys, f"more than {MAX_ALIASES} YAML aliases")
    # Few aliases, each expanding a lot: refused on the expanded size, not the count.
    wide = "a: &a [" + ", ".join(["x"] * 5000) + "]\nb: [" + ", ".join(["*a"] * 60) + "]\n"
    assert_refused(tmp_path, wide, capsys, "once YAML aliases are expanded")
    assert time.monotonic() - started < 5


def test_a_smaller_bomb_cannot_render_an_oversized_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Within the alias bounds, but the expanded job file would exceed the pod annotation.
    doc = training()
    doc["spec"]["model"] = {"config": "CONFIG"}
    text = dump(doc).replace(
        "CONFIG",
        "{big: &b [" + ", ".join(["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"] * 2000) + "], more: [*b, *b, *b]}",
    )
    assert_refused(tmp_path, text, capsys, "spec.model.config: too large")


def test_anchors_within_bounds_still_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = training()
    doc["spec"]["model"]["layers"] = [{"type": "Dense", "units": 8, "activation": "relu"}] * 2 + [
        {"type": "Dense", "units": 10, "activation": "softmax"}
    ]
    text = yaml.dump(doc, sort_keys=False)  # yaml.dump writes anchors for the repeated layer
    assert "&id" in text
    code, err = render(tmp_path, text, capsys)
    assert code == 0, err


def test_duplicate_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_refused(tmp_path, dump(training(), training()), capsys, "document 2: metadata.name")
    assert "also document 1" in line
    other = _set(training(), "metadata.namespace", "other")
    code, err = render(tmp_path, dump(training(), other, service()), capsys)
    assert code == 0, err  # another namespace or another kind is another object


def test_invalid_document_among_several_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(
        tmp_path, dump(training(), _set(service(), "spec.replicas", -1)), capsys, "document 2: spec.replicas"
    )


def test_bad_namespace_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(dump(training()))
    assert cli.main(["render", str(path), "-n", "Not A Namespace"]) == cli.EXIT_INVALID
    assert "--namespace" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "serve", "render"])
@pytest.mark.slow
def test_every_command_refuses_without_a_traceback(command: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe" + _bomb(9).encode())
    done = subprocess.run(
        [sys.executable, "-m", "kerasop.cli", command, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == cli.EXIT_INVALID, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("error: "), done.stderr


def test_operator_volumes_are_all_reserved() -> None:
    """The names and paths the builders use are those the API reserves (they live apart: api/ imports no
    builder)."""
    doc = _set(training(), "spec.model", {"callable": "m:f", "codeConfigMap": "code"})
    doc["spec"]["data"]["train"] = {"uri": "pvc://data/train.npz"}
    job = parse(doc)
    owner = {"apiVersion": "x", "kind": "KerasTrainingJob", "metadata": {"name": "digits", "uid": "u"}}
    built = build_job(owner, job.spec, "img", ProgressEndpoint("https://op:8443"))  # type: ignore[arg-type]
    svc = parse(service())
    deployment = build_deployment(owner, svc.spec, "pvc://models/m.keras", "img")  # type: ignore[arg-type]
    for obj in (built, deployment):
        pod = obj["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            assert volume["name"] in common.RESERVED_VOLUMES or re.fullmatch(r"pvc-\d+", volume["name"])
        for mount in pod["containers"][0]["volumeMounts"]:
            path = mount["mountPath"]
            assert path in common.RESERVED_MOUNT_PATHS or path.startswith(common.PVC_MOUNT_ROOT + "/"), path


# --- the fuzz: mutated examples either parse or fail as InvalidResource naming a field ----------------------

_FIELD_PATH = re.compile(r"^(document \d+: )?(<root>|[A-Za-z_][\w]*(\.|\[|:| )|line \d+)")
# Our resources only: a ConfigMap of code beside them has no spec to mutate.
BASES = [doc for example in EXAMPLES for doc in yaml.safe_load_all(example.read_text()) if "spec" in doc]

_hostile_scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**31 - 1, 2**63, -(2**63) - 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "pvc://", "pvc://A/b", "PVC://x", "http://[::1", "../../etc", "a" * 300, "1e-05", "null"]),
    st.binary(max_size=16),
    st.none(),
)
_hostile = st.recursive(
    _hostile_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p[:1] == ("spec",) or p[:2] == ("metadata", "name")]
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["value", "deep", "snake", "swap", "drop"]))
        if kind == "value":
            doc = _replace(doc, path, draw(_hostile))
        elif kind == "deep":
            doc = _replace(doc, path, _deep(draw(st.integers(MAX_DEPTH - 3, 3 * MAX_DEPTH))))
        elif kind == "snake" and isinstance(path[-1], str):
            parent = _replace(doc, (), doc)
            for part in path[:-1]:
                parent = parent[part]
            snake = re.sub(r"(?<!^)([A-Z])", r"_\1", path[-1]).lower()
            parent[snake] = parent.pop(path[-1])
        elif kind == "swap":
            current: Any = doc
            for part in path:
                current = current[part]
            swapped = {bool: 1, int: True, float: "0.1", str: 7, list: {"a": 1}, dict: ["a"]}.get(type(current), "x")
            doc = _replace(doc, path, swapped)
        elif kind == "drop" and len(path) > 1:
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
    return doc


FUZZ = {"cases": 0, "invalid": 0, "valid": 0}


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_fuzzed_examples_parse_or_fail_naming_a_field(doc: dict[str, Any]) -> None:
    FUZZ["cases"] += 1
    try:
        resource = parse(doc)
    except InvalidResource as exc:
        FUZZ["invalid"] += 1
        message = str(exc)
    else:
        message = None
    if message is not None:
        assert _FIELD_PATH.match(message), message
        assert "\n" not in message
        return
    FUZZ["valid"] += 1
    # What parses must also render: the builders meet no value they cannot handle.
    cli.render_objects(resource, [resource], None)
    json.dumps(resource.dump())


def test_fuzz_ran() -> None:
    assert FUZZ["cases"] in (0, 600), FUZZ  # 0 when run alone
    print(f"fuzz: {FUZZ}")


def test_the_controllers_check_names_that_depend_on_the_kind() -> None:
    """What the CRD's metadata rule cannot say (a service's name names Services, several workers name a Service
    and long hostnames) is refused by the reconcile path too, not only by `kerasop`."""
    import asyncio

    from helpers.jobs import tiny_job
    from keras_operator.controllers import serving_reconciler, training_reconciler
    from keras_operator.runtime.settings import Settings

    job = tiny_job("9lives", distribution={"workers": 2}, backend="jax")
    with pytest.raises(InvalidResource, match=r"^metadata\.name: '9lives' must start with a letter"):
        training_reconciler.validate(job)
    output = {"uri": "pvc://models/m"}
    long_name = "a" * 53  # the longest the CRD allows; its 10,000th pod's hostname would be 64 characters
    with pytest.raises(InvalidResource, match=r"^metadata\.name: too long for 10000 workers"):
        training_reconciler.validate(tiny_job(long_name, distribution={"workers": 10000}, backend="jax", output=output))
    training_reconciler.validate(tiny_job("9lives", output=output))  # one worker: no Service, any DNS label

    body = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "1digits", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"uri": "pvc://models/m.keras"}},
    }
    view = serving_reconciler.ObservedService(resource=body)
    outcome = asyncio.run(serving_reconciler.reconcile(view, Settings(), FakeApi()))  # type: ignore[arg-type]
    valid = next(c for c in outcome.status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith("metadata.name: '1digits' must start with a letter")
    assert outcome.status["phase"] == "Failed"
