"""The trainer's job file: what one training run needs, versioned on its own, apart from the CRD.

The operator writes it (builders/training_manifests.py) into the pod template, the trainer reads it, and the two
may be different releases: a pinned trainer image outlives operator upgrades. So the file has its own
`apiVersion: kerasoperator.dev/trainer/vN`, `kind: TrainerJob`, and these rules:

- Within a major version, changes only add fields. A reader ignores the fields it does not know (the
  trainer logs them once) instead of failing: a newer operator, or a CRD that gained a defaulted field,
  cannot break an older trainer.
- A file of a newer major version is refused with a clear message (a trainer must not guess at a format
  that changed incompatibly): the trainer exits with EXIT_INVALID_SPEC, as retrying cannot help.
- A whole KerasTrainingJob (what operators before this format wrote, or a file written by hand) is
  still read, strictly, and turned into a TrainerJob.

Objects that pass their extra keys to Keras (a layer's arguments, an optimizer's) keep them: for those
an unknown key is an argument, not a newer field.

Nothing here imports TensorFlow or Keras: the operator imports this module.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError

from keras_operator.api.base import ApiModel, field_path
from keras_operator.api.common import API_VERSION, GROUP, Backend, CodeSpec
from keras_operator.api.parse import InvalidResource, parse
from keras_operator.api.training_job import KIND as TRAINING_KIND
from keras_operator.api.training_job import (
    DataSpec,
    KerasTrainingJob,
    KerasTrainingJobSpec,
    ModelSpec,
    OutputSpec,
    TrainingSpec,
)

JOBFILE_GROUP = f"{GROUP}/trainer"
JOBFILE_MAJOR = 1
JOBFILE_API_VERSION = f"{JOBFILE_GROUP}/v{JOBFILE_MAJOR}"
JOBFILE_KIND = "TrainerJob"

# A run's outputs, under spec.output.uri: RUNS_DIR/RUN_ID/{model.keras, savedmodel/, checkpoints/, logs/}.
RUNS_DIR = "runs"
RUN_RECORD = "run.json"
"""In a run's checkpoint folder: the run id and the spec hash (TrainerJob.spec_hash) the checkpoint belongs
to; it is resumed only by the same run training the same spec."""
CODE_FOLDER = "code"
"""In a run's folder, beside the model: a copy of the user's Python the run trained with."""
CODE_RECORD = "code.json"
"""Beside CODE_FOLDER: each file's sha256, one hash over them all, and the modules to import before
loading the model."""
COMPLETE_MARKER = "_COMPLETE.json"
"""Written last, once every file of the model is in place: a run's model is complete when it exists."""
LOCAL_RUN_ID = "local"
"""The run id of a local run (`kerasop run`, or `keras-trainer train` on a resource without a uid)."""
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # one path segment; a Kubernetes uid fits

SPEC_SECTIONS = ("backend", "model", "data", "training", "output")
"""The TrainerJob fields that are KerasTrainingJob spec fields of the same name (errors name them spec.X)."""


def check_run_id(run_id: str) -> str:
    """`run_id`, or ValueError when it is not one safe path segment."""
    if not re.match(RUN_ID_PATTERN, run_id) or run_id in (".", ".."):
        raise ValueError(f"run id {run_id!r} is not one path segment of letters, digits, '.', '_' or '-'")
    return run_id


def run_prefix(output_uri: str, run_id: str) -> str:
    """Where one run writes: OUTPUT/runs/RUN_ID. A new resource (a new uid) with the same output.uri
    never reads or overwrites an older run's checkpoints or model; a retried pod (same uid) finds its own."""
    return f"{output_uri.rstrip('/')}/{RUNS_DIR}/{check_run_id(run_id)}"


class RunIdentity(ApiModel):
    """Which run this is: the resource, and the id its outputs are kept under."""

    id: Annotated[str, Field(pattern=RUN_ID_PATTERN)]
    """The run id: the resource's uid in a cluster (a deleted and re-applied resource is a new run)."""
    name: Annotated[str, Field(min_length=1)]
    """The KerasTrainingJob's name."""
    namespace: str | None = None
    generation: int | None = None
    """The .metadata.generation the Job was made from."""


class Distribution(ApiModel):
    """How many devices each pod was given (the trainer uses every device it finds), and how many pods
    train together."""

    gpus: Annotated[int, Field(ge=0)] = 0
    workers: Annotated[int, Field(ge=1)] = 1
    """Pods of one training (spec.distribution.workers); each finds its own index and worker 0's address
    in KERAS_DISTRIBUTION_* variables, which keras.distribution.initialize() reads."""


class TrainerJob(ApiModel):
    """The trainer's job file, version 1."""

    api_version: str = JOBFILE_API_VERSION
    kind: Literal["TrainerJob"] = JOBFILE_KIND
    run: RunIdentity
    backend: Backend = "tensorflow"
    model: ModelSpec
    data: DataSpec
    training: TrainingSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    distribution: Distribution = Field(default_factory=Distribution)
    code: CodeSpec | None = None
    """Where the user's Python comes from (spec.code, or model.codeConfigMap in its long form)."""

    def prefix(self) -> str:
        """This run's own output folder (output.uri must be set)."""
        assert self.output.uri is not None
        return run_prefix(self.output.uri, self.run.id)

    def spec_hash(self) -> str:
        """A hash of what determines the trained weights: a checkpoint is resumed only by a training of
        the same hash. The run id alone does not tell: every `kerasop run` is run `local`, so an edited
        spec written to the same output would otherwise continue (or, past its epochs, "finish" with)
        the previous spec's weights.

        In, as the spec writes them with every default filled in:
        - backend: another backend initialises, orders and rounds differently; it is another training.
        - model: the architecture, its starting weights (uri, as resolved: an operator's trainingJobRef, a
          trainer's output folder; application weights), the callable and
          ConfigMap that build it (their names: code changed in the same ConfigMap is not seen).
        - code, when given: where the code comes from and what is imported (the source, not its bytes,
          as for the ConfigMap); the short form model.codeConfigMap is already in model.
        - data: what is trained on and how it is split and shuffled. The spec, not the bytes: a file
          replaced under the same URI is not seen (hashing it would mean reading all the data first).
        - training, all of it: epochs (a checkpoint at epoch 8 is no state of a 3-epoch training, and
          resuming it would end at once), batch size, optimizer, loss and seed shape the weights; the
          checkpoint holds the metrics' and optimizer's state, and mixed precision the variables' dtypes;
          early stopping decides which weights are kept.
        Out:
        - output: where and in which formats the model is saved, whether checkpoints and TensorBoard logs
          are written; none changes a weight (and the run's folder already depends on output.uri).
        - distribution (gpus, workers) and the pod's resources: the same global batch spread over other
          devices is the same training.
        - run: its id is checked on its own, and its generation also moves with edits that train nothing
          differently (runPolicy.suspend); apiVersion/kind: the file's format, not the training.

        Not carried in the job file but computed from it, by the trainer: a hash written beside the spec
        could disagree with it (a file edited by hand), and a pod's job file and trainer image are fixed
        for its Job's life, so every retry of a run computes the same hash. A trainer release that adds a
        defaulted field to these sections changes the hash: a run interrupted across such an upgrade
        starts fresh, the safe side."""
        sections = {
            "backend": self.backend,
            "model": self.model.dump(),
            "data": self.data.dump(),
            "training": self.training.dump(),
        }
        short = self.model.code_config_map
        if self.code is not None and not (short and self.code == CodeSpec(config_map=short)):
            sections["code"] = self.code.dump()  # absent otherwise: hashes from before the field stay
        canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def text(self) -> str:
        # JSON, which a YAML reader also takes, and which keeps 1e-05 a number (YAML 1.1 would not).
        return json.dumps(self.dump(), separators=(",", ":"))


def from_spec(metadata: dict[str, Any], spec: KerasTrainingJobSpec, run_id: str | None = None) -> TrainerJob:
    """The job file for a resource: the spec with every default filled in (so operator and trainer agree
    on them), the run identity from its metadata; the run id is the uid unless given."""
    run_id = run_id or metadata.get("uid") or LOCAL_RUN_ID
    return TrainerJob(
        run=RunIdentity(
            id=run_id,
            name=metadata["name"],
            namespace=metadata.get("namespace"),
            generation=metadata.get("generation"),
        ),
        backend=spec.backend,
        model=spec.model,
        data=spec.data,
        training=spec.training,
        output=spec.output,
        distribution=Distribution(gpus=spec.resources.gpus, workers=spec.distribution.workers),
        code=spec.code_source(),
    )


def starting_from(spec: KerasTrainingJobSpec, model_uri: str) -> KerasTrainingJobSpec:
    """The spec with spec.model.trainingJobRef resolved to the referenced training's model: the job file
    carries the URI (so the spec hash, and with it whether a checkpoint may be resumed, depends on the model
    started from), and a trainer never looks another resource up."""
    model = spec.model.model_copy(update={"training_job_ref": None, "uri": model_uri})
    return spec.model_copy(update={"model": model})


def from_resource(job: KerasTrainingJob, run_id: str | None = None, output_uri: str | None = None) -> TrainerJob:
    """The job file for a parsed KerasTrainingJob (`kerasop run`, a hand-written file); `output_uri`
    replaces spec.output.uri."""
    trainer_job = from_spec(job.metadata.model_dump(exclude_none=True), job.spec, run_id)
    if output_uri:
        trainer_job = trainer_job.model_copy(
            update={"output": trainer_job.output.model_copy(update={"uri": output_uri})}
        )
    return trainer_job


class UnsupportedVersion(InvalidResource):
    """A job file of a major version this reader does not know."""


def _major(version: str) -> int | None:
    found = re.fullmatch(r"v(\d+)((alpha|beta)\d+)?", version)
    return int(found.group(1)) if found else None


def read(doc: dict[str, Any]) -> tuple[TrainerJob, list[str]]:
    """A job file (or a whole KerasTrainingJob) -> (the TrainerJob, the fields it ignored as unknown).
    Raises InvalidResource, whose str() names the field."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind == TRAINING_KIND and api_version == API_VERSION:
        resource = parse(doc)
        assert isinstance(resource, KerasTrainingJob)
        return from_resource(resource), []
    group, _, version = str(api_version).rpartition("/")
    if group != JOBFILE_GROUP or kind != JOBFILE_KIND:
        raise InvalidResource(
            f"apiVersion/kind: expected {JOBFILE_API_VERSION} {JOBFILE_KIND} (or {API_VERSION} {TRAINING_KIND}), "
            f"got {api_version!r} {kind!r}"
        )
    major = _major(version)
    if major != JOBFILE_MAJOR:
        raise UnsupportedVersion(
            f"apiVersion: {api_version} is a job file version this trainer does not read (it reads "
            f"{JOBFILE_API_VERSION}); use a trainer image as recent as the operator that wrote it"
        )
    dropped: list[str] = []
    known = _prune(TrainerJob, doc, "", dropped)
    known["apiVersion"] = JOBFILE_API_VERSION  # a later minor revision, read as the version we know
    try:
        return TrainerJob.model_validate(known), dropped
    except ValidationError as exc:
        raise InvalidResource(_describe(exc)) from exc


def _describe(error: ValidationError) -> str:
    """One line per problem, naming spec fields as the user wrote them (spec.training.epochs)."""
    lines = []
    for err in error.errors():
        loc = err["loc"]
        prefix = "spec" if loc and loc[0] in SPEC_SECTIONS else ""
        lines.append(f"{field_path(prefix, loc)}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(dict.fromkeys(lines))


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _holds_model(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model(arg) for arg in get_args(annotation))


def _prune(cls: type[BaseModel], data: Any, path: str, dropped: list[str]) -> Any:
    """`data` less the keys `cls` (and the models inside it) does not declare, each recorded in `dropped`."""
    if not isinstance(data, dict):
        return data
    fields = {}
    for name, info in cls.model_fields.items():
        fields[name] = info
        if info.alias:
            fields[info.alias] = info
    keeps_extra = cls.model_config.get("extra") == "allow"  # Keras arguments, passed through
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        info = fields.get(key)
        if info is None:
            if keeps_extra:
                out[key] = value
            else:
                dropped.append(where)
            continue
        out[key] = _prune_value(info.annotation, value, where, dropped)
    return out


def _prune_value(annotation: Any, value: Any, path: str, dropped: list[str]) -> Any:
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arm in get_args(annotation):
            arm = _unwrap(arm)
            if isinstance(value, dict) and _holds_model(arm) and get_origin(arm) is not list:
                return _prune_value(arm, value, path, dropped)
            if isinstance(value, list) and get_origin(arm) is list:
                return _prune_value(arm, value, path, dropped)
        return value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _prune(annotation, value, path, dropped)
    if origin is list and isinstance(value, list):
        (item,) = get_args(annotation)
        return [_prune_value(item, v, f"{path}[{i}]", dropped) for i, v in enumerate(value)]
    return value
