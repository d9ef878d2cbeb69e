"""The KerasTrainingJob API: the one definition the CRD, operator, trainer and CLI all read."""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

from keras_operator.api.base import (
    ApiModel,
    OpenModel,
    Rule,
    at_most_one_of,
    cel_raw_string,
    exactly_one_of,
    immutable_fields,
    requires,
)
from keras_operator.api.common import (
    API_VERSION,
    DNS1123_LABEL,
    Backend,
    CodeSpec,
    Condition,
    Image,
    Int32,
    OptionalSubdomainName,
    PodTemplate,
    Resources,
    SubdomainName,
    TrainingJobRef,
    Uri,
)
from keras_operator.api.limits import INT32_MAX

KIND = "KerasTrainingJob"
PLURAL = "kerastrainingjobs"

Shape = list[Annotated[int, Field(ge=1)]]

# A value that is either a name or a {name, args} object cannot be a structural schema type;
# the schema keeps it open and pydantic checks it.
NameOrObject = Annotated[
    str | dict[str, Any],
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
StrOrList = Annotated[
    str | list[str],
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class Layer(OpenModel):
    """A Keras layer: its class name plus the constructor arguments, e.g. {type: Dense, units: 64}."""

    type: Annotated[str, Field(min_length=1)]
    """A keras.layers class name, e.g. Dense, Conv2D, Dropout."""


# true (all), false (frozen) or how many of the top layers train; a structural schema has no bool-or-int
# type, so the schema keeps it open and pydantic checks it.
Trainable = Annotated[
    StrictBool | Annotated[StrictInt, Field(ge=0)],
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class Application(ApiModel):
    """A model from keras.applications."""

    name: Annotated[str, Field(min_length=1)]
    """A keras.applications class name, e.g. MobileNetV2, ResNet50."""
    weights: str | None = None
    """Pretrained weights ("imagenet", downloaded at run time, or a file path); empty for random init."""
    args: dict[str, Any] | None = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """Keyword arguments for the constructor, e.g. {input_shape: [32, 32, 3], classes: 10}."""
    trainable: Trainable = True
    """Which of its layers train: true (all), false (frozen: only a head trains), or a count N (the top N
    layers train, the ones below are frozen). Layers counted are the application's own, input layer aside;
    BatchNormalization layers of a frozen part run in inference mode."""


class ModelSpec(ApiModel):
    """The model to train: exactly one of layers, config, application, callable, uri, trainingJobRef."""

    rules: ClassVar[tuple[Rule, ...]] = (
        exactly_one_of("layers", "config", "application", "callable", "uri", "trainingJobRef"),
        requires("layers", "inputShape"),
        requires("head", "application"),
    )

    input_shape: Shape | None = None
    """Shape of one example without the batch dimension, e.g. [64] or [28, 28, 1]; required with layers."""
    layers: Annotated[list[Layer], Field(min_length=1)] | None = None
    """A Sequential model as a list of layers."""
    config: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A full Keras model config, as produced by model.to_json()."""
    application: Application | None = None
    """A model from keras.applications."""
    callable: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
    """A Python function "module:function" returning a keras.Model; the module comes from spec.code (or
    codeConfigMap) or the image."""
    code_config_map: SubdomainName | None = None
    """The short form of spec.code.configMap: a ConfigMap whose files are put on the Python path."""
    uri: Uri | None = None
    """A model to start from (fine-tuning, continued training): a saved .keras file, or a training's output
    folder (its spec.output.uri), which stands for the model of its newest complete run (the run whose
    _COMPLETE.json records the latest completion time)."""
    training_job_ref: TrainingJobRef | None = None
    """Start from the model of this KerasTrainingJob (same namespace): the operator waits, creating no Job,
    until it has succeeded, then trains from its status.modelUri (recorded in status.startedFrom)."""
    head: Annotated[list[Layer], Field(min_length=1)] | None = None
    """Layers put on top of the application's output (with application): the application is built
    without its top (include_top false; args.pooling, e.g. avg, flattens its features), e.g.
    [{type: Dense, units: 10, activation: softmax}]."""


DataFormat = Literal["npz", "csv", "tfrecord", "images"]
KerasDataset = Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]


class Synthetic(ApiModel):
    """Random data with the given shape, for smoke tests."""

    samples: Annotated[int, Field(ge=1)] = 256
    """Number of examples."""
    input_shape: Shape
    """Shape of one example."""
    classes: Annotated[int, Field(ge=0)] = 10
    """Number of classes for integer labels; 0 gives one float target per example (regression)."""


class DataSource(ApiModel):
    """Where examples come from: exactly one of uri, synthetic, keras."""

    rules: ClassVar[tuple[Rule, ...]] = (exactly_one_of("uri", "synthetic", "keras"),)

    uri: Uri | None = None
    """pvc://CLAIM/PATH, s3://, gs://, https://, file:// or a plain path."""
    format: DataFormat | None = None
    """npz, csv, tfrecord or images (class-per-folder); inferred from the suffix when omitted."""
    features: StrOrList | None = None
    """npz key or tfrecord feature (a string), or csv columns (a list or comma-separated string); default x
    (npz, tfrecord) or all but the label column (csv)."""
    labels: str | None = None
    """npz key, tfrecord feature or csv column of the targets; default y (npz, tfrecord) or the last column
    (csv)."""
    shape: Shape | None = None
    """Shape of one example for tfrecord features (stored flat)."""
    image_size: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)] | None = None
    """[height, width] images are resized to (images format); default [224, 224]."""
    color_mode: Literal["rgb", "grayscale", "rgba"] = "rgb"
    """Channels for images (images format)."""
    synthetic: Synthetic | None = None
    """Random data, for smoke tests."""
    keras: KerasDataset | None = None
    """A keras.datasets name, downloaded at run time."""


class DataSpec(ApiModel):
    """Training data and how to validate."""

    rules: ClassVar[tuple[Rule, ...]] = (at_most_one_of("validation", "validationSplit"),)

    train: DataSource
    """Training examples."""
    validation: DataSource | None = None
    """Validation examples; exclusive with validationSplit."""
    validation_split: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Fraction of the training data held out for validation."""
    shuffle: bool = True
    """Shuffle the training data every epoch."""


class Schedule(ApiModel):
    """A keras.optimizers.schedules class and its arguments, e.g. {name: CosineDecay, args:
    {initialLearningRate: 0.01, decaySteps: 1000}} (arguments in camelCase or snake_case)."""

    name: Annotated[str, Field(min_length=1)]
    """A keras.optimizers.schedules class name: CosineDecay, ExponentialDecay, PiecewiseConstantDecay, ..."""
    args: dict[str, Any] | None = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """Its constructor's arguments."""


# A number or a schedule: open in the schema (no number-or-object type), checked by pydantic.
LearningRate = Annotated[
    Annotated[float, Field(gt=0)] | Schedule,
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class Optimizer(OpenModel):
    """A keras.optimizers name plus its arguments, e.g. {name: adam, learningRate: 0.001}."""

    rules: ClassVar[tuple[Rule, ...]] = (at_most_one_of("clipNorm", "clipValue", "globalClipNorm"),)

    name: Annotated[str, Field(min_length=1)] = "adam"
    """A keras.optimizers name, e.g. adam, sgd, rmsprop, adamw."""
    learning_rate: LearningRate | None = None
    """Learning rate: a number, or a schedule {name: CosineDecay, args: {...}}; the optimizer's default when
    omitted."""
    clip_norm: Annotated[float, Field(gt=0)] | None = None
    """Clip each weight's gradient to this norm (Keras clipnorm)."""
    clip_value: Annotated[float, Field(gt=0)] | None = None
    """Clip every gradient value to [-clipValue, clipValue] (Keras clipvalue)."""
    global_clip_norm: Annotated[float, Field(gt=0)] | None = None
    """Clip the gradients together so that their global norm is at most this (Keras global_clipnorm)."""


def _optimizer_by_name(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


# `optimizer: adam`, as Keras' own compile() takes it, or {name, learningRate, ...}; like a loss, the
# schema keeps the value open (a structural schema has no string-or-object type) and pydantic checks it.
OptimizerOrName = Annotated[
    Optimizer,
    BeforeValidator(_optimizer_by_name),
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
SEED_MAX = 2**32 - 1  # the widest seed every backend's generator takes


class EarlyStopping(ApiModel):
    """Stop when a monitored metric stops improving."""

    monitor: str = "val_loss"
    """The metric to watch, e.g. val_loss or val_accuracy."""
    patience: Annotated[int, Field(ge=0)] = 3
    """Epochs without improvement before stopping."""
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    """Smallest change that counts as an improvement."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether the metric should go down (min) or up (max)."""
    restore_best_weights: bool = True
    """Keep the weights of the best epoch rather than the last."""


class Callback(ApiModel):
    """A keras.callbacks class and its arguments, e.g. {name: ReduceLROnPlateau, args: {patience: 2}}."""

    name: Annotated[str, Field(min_length=1)]
    """A keras.callbacks class name: ReduceLROnPlateau, TerminateOnNaN, CSVLogger, ModelCheckpoint, ...
    (not those the trainer runs itself: BackupAndRestore, TensorBoard, ProgbarLogger, History)."""
    args: dict[str, Any] | None = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """Its constructor's arguments. A path argument (CSVLogger's filename, ModelCheckpoint's filepath) is a
    file name inside the run's folder (OUTPUT/runs/RUN_ID/callbacks/), kept with the model."""


# keras.callbacks the trainer refuses in spec.training.callbacks, and why: what it runs itself, or what a
# YAML cannot give (a Python function). The operator (api/catalogue.py) and the trainer both refuse them.
REFUSED_CALLBACKS = MappingProxyType(
    {
        "BackupAndRestore": "the trainer backs up and resumes itself: set spec.output.checkpoints",
        "OrbaxCheckpoint": "the trainer backs up and resumes itself: set spec.output.checkpoints",
        "TensorBoard": "the trainer writes TensorBoard logs itself: set spec.output.tensorboard",
        "ProgbarLogger": "the trainer reports progress itself (the status, one log line per epoch)",
        "History": "the trainer records the history itself (status.metrics)",
        "LambdaCallback": "it takes Python functions, which a spec cannot hold",
        "LearningRateScheduler": "it takes a Python function: give spec.training.optimizer.learningRate a schedule",
        "Callback": "the base class does nothing: name a callback",
        "CallbackList": "the trainer makes the list: name each callback",
    }
)
# Callback arguments that are paths: given a file name (or nothing), the trainer puts the file in the run's
# folder, under CALLBACKS_DIR, kept and uploaded with the model.
CALLBACK_PATH_ARGS = MappingProxyType(
    {"CSVLogger": ("filename", "training.csv"), "ModelCheckpoint": ("filepath", "checkpoint.keras")}
)
CALLBACKS_DIR = "callbacks"
MAX_PHASES = 4


class TrainingPhase(ApiModel):
    """One stage of a training: how many epochs, which layers train, at which learning rate."""

    epochs: Annotated[int, Field(ge=1)]
    """Epochs of this phase."""
    trainable: Trainable = True
    """Which layers of the base train in this phase: true, false, or the top N. The base is the application
    when model.head is set (the head always trains), else the whole model."""
    learning_rate: LearningRate | None = None
    """The learning rate (a number or a schedule) from this phase on; the optimizer's otherwise."""


def _phase_epochs_cel() -> str:
    # Kubernetes' CEL has sum(), the evaluators the tests use do not: the sum of at most MAX_PHASES, unrolled.
    terms = " + ".join(f"(self.phases.size() > {i} ? self.phases[{i}].epochs : 0)" for i in range(MAX_PHASES))
    return f"!has(self.phases) || {terms} == self.epochs"


def _class_weight_keys(spec: TrainingSpec) -> bool:
    return all(k.isdecimal() and k.isascii() for k in spec.class_weight or {})


class TrainingSpec(ApiModel):
    """How to fit the model."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=_phase_epochs_cel(),
            message="the epochs of the phases must add up to epochs",
            holds=lambda t: t.phases is None or sum(p.epochs for p in t.phases) == t.epochs,
        ),
        Rule(
            cel=f"!has(self.classWeight) || self.classWeight.all(k, k.matches({cel_raw_string('^[0-9]+$')}))",
            message="classWeight keys are class indices (0, 1, 2, ...)",
            holds=_class_weight_keys,
        ),
    )

    epochs: Annotated[int, Field(ge=1)]
    """Number of epochs."""
    batch_size: Annotated[int, Field(ge=1)] = 32
    """Examples per gradient step."""
    optimizer: OptimizerOrName = Field(default_factory=Optimizer)
    """A keras.optimizers name (e.g. adam), or {name, learningRate, ...} with its arguments."""
    loss: NameOrObject = "sparse_categorical_crossentropy"
    """A keras.losses name, or {name, args}."""
    metrics: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["accuracy"])
    """keras.metrics names to compute; the status reports them under these names (mae stays mae)."""
    early_stopping: EarlyStopping | None = None
    """Stop early when a metric stops improving."""
    mixed_precision: bool = False
    """Compute in float16 (mixed_float16 policy), for GPUs with tensor cores."""
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    """Seed for Python, NumPy and the backend, for repeatable runs (0 to 4294967295)."""
    class_weight: Annotated[dict[str, Annotated[float, Field(ge=0)]], Field(max_length=100_000)] | None = None
    """A weight per class index ("0": 1.0, "1": 5.0) scaling each example's loss (Keras' class_weight);
    classes left out weigh 1."""
    callbacks: Annotated[list[Callback], Field(max_length=32)] | None = None
    """keras.callbacks to run too, by name with their arguments."""
    phases: Annotated[list[TrainingPhase], Field(min_length=1, max_length=MAX_PHASES)] | None = None
    """Train in stages (transfer learning: a frozen base, then unfrozen at a lower rate), one after the
    other in one run; their epochs add up to epochs, which the status counts across phases. A resumed
    run continues in the phase its checkpoint's epoch falls in."""


OutputFormat = Literal["keras", "savedmodel"]
# What a training writes under spec.output.uri; the trainer, the operator and the CLI all read these.
MODEL_FILE = "model.keras"
SAVEDMODEL_DIR = "savedmodel"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "logs"


class CheckpointEvery(ApiModel):
    """How often a checkpoint is saved within an epoch: exactly one of steps, minutes."""

    rules: ClassVar[tuple[Rule, ...]] = (exactly_one_of("steps", "minutes"),)

    steps: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    """Save every this many training steps (batches), counted across epochs."""
    minutes: Annotated[float, Field(gt=0, le=100_000)] | None = None
    """Save at the first step end at least this many minutes after the last save (a fraction works)."""


# The pod's terminationGracePeriodSeconds is saveSeconds plus this: time to finish the step under way,
# upload the checkpoint's last files and write the result.
GRACE_ROOM_SECONDS = 30


class Checkpoints(ApiModel):
    """What `output.checkpoints` holds: true/false, or {every: {steps: N} | {minutes: M}, saveSeconds}."""

    enabled: bool = True
    """Save checkpoints at all; false trains without (a retried pod starts over)."""
    every: CheckpointEvery | None = None
    """Save within epochs too, every N steps or M minutes; every epoch end always saves."""
    save_seconds: Annotated[int, Field(ge=1, le=86_400)] = 60
    """How long saving one checkpoint may take: on SIGTERM the trainer saves at the next step end, and the
    pod's grace period is this plus 30 seconds. The trainer reports each save's duration; a save slower
    than this is reported (a CheckpointSlow Warning Event)."""

    def __bool__(self) -> bool:
        return self.enabled

    def grace_period_seconds(self) -> int:
        return self.save_seconds + GRACE_ROOM_SECONDS


def _checkpoints_from_bool(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


def _checkpoints_to_wire(value: Checkpoints) -> bool | dict[str, Any]:
    """true/false when nothing else was asked for, as before: a job file an older trainer still reads."""
    dumped = value.dump()
    return value.enabled if dumped == {"enabled": value.enabled, "saveSeconds": 60} else dumped


# `checkpoints: true` as before, or an object: a structural schema has no bool-or-object type, so the
# schema keeps the value open and pydantic checks it (like `optimizer`).
CheckpointsOrBool = Annotated[
    Checkpoints,
    BeforeValidator(_checkpoints_from_bool),
    PlainSerializer(_checkpoints_to_wire),
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class OutputSpec(ApiModel):
    """Where the model and checkpoints go."""

    uri: Uri | None = None
    """A folder: pvc://CLAIM/PATH, s3://, gs://, file:// or a plain path; required in a cluster, a local run
    defaults to ./runs/NAME."""
    formats: Annotated[list[OutputFormat], Field(min_length=1)] = Field(default_factory=lambda: ["keras"])
    """keras (a model.keras file) and/or savedmodel (model.export, for TF Serving)."""
    checkpoints: CheckpointsOrBool = Field(default_factory=Checkpoints)
    """true (the default): back up at every epoch end and resume from there after a restart or preemption;
    false: none. Or {every: {steps: N} | {minutes: M}, saveSeconds: S}: also save every N steps or M
    minutes and resume mid-epoch, at the saved step. On SIGTERM the trainer saves at the next step end
    (within the pod's grace period, saveSeconds + 30) and exits."""
    tensorboard: bool = False
    """Write TensorBoard logs to URI/logs (uploaded every epoch; status.tensorboardUri says where)."""

    def model_path(self) -> str:
        """The model to serve, relative to uri: the .keras file, or the SavedModel when that is all there is."""
        return MODEL_FILE if "keras" in self.formats else SAVEDMODEL_DIR


class RunPolicy(ApiModel):
    """How the Job runs: retries, deadlines, clean-up, queueing. Like the rest of the spec, fixed once
    the resource exists, except suspend."""

    # Kueue reads its priority label only on the Jobs it manages: those with a queue.
    rules: ClassVar[tuple[Rule, ...]] = (requires("workloadPriorityClass", "queueName"),)

    backoff_limit: Annotated[Int32, Field(ge=0)] = 3
    """Retries before the Job is marked failed."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Time limit for the whole Job."""
    ttl_seconds_after_finished: Annotated[Int32, Field(ge=0)] | None = None
    """Delete the finished Job (not this resource) after this many seconds."""
    suspend: bool = False
    """Suspend the training: the Job is created (or set) suspended and its pods stop; setting it back to
    false resumes from the last checkpoint. Without queueName the operator flips the Job's own suspend;
    with a queueName Kueue owns it. The one field of the spec that may change after creation."""
    # Written as a label value, and the name of a LocalQueue; "" for none.
    queue_name: Annotated[str, Field(max_length=63, pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")] | None = None
    """A Kueue LocalQueue: the Job is created suspended with the kueue.x-k8s.io/queue-name label and Kueue
    admits it. Fixed at creation (the operator does not relabel a Job): to queue elsewhere, delete and
    re-apply."""
    priority_class_name: OptionalSubdomainName | None = None
    """PriorityClass of the training pods."""
    workload_priority_class: (
        Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] | None
    ) = None
    """A Kueue WorkloadPriorityClass (with queueName): the Job gets the kueue.x-k8s.io/priority-class label,
    which orders it in its queue and decides which admitted workloads Kueue may preempt for it (and which
    may preempt it). Independent of priorityClassName, the pods' scheduling priority."""


# The port JAX's coordination service listens on in worker 0 (the Job's pods name it "coordinator").
COORDINATOR_PORT = 8476


MAX_WORKERS = 100_000  # the API server's most completions and parallelism for an Indexed Job


class DistributionSpec(ApiModel):
    """How many pods train together: one model, each batch split over every device of every pod."""

    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    """Number of pods, each with spec.resources; above 1 needs backend jax (Keras 3 trains across pods
    only with JAX's keras.distribution). The pods form one Indexed Job: the training succeeds when
    worker 0 does, and fails together: when one worker fails, JAX ends the others, and the whole group
    restarts from worker 0's last checkpoint. runPolicy.backoffLimit counts such group restarts (the Job
    allows backoffLimit x workers pod failures)."""


class KerasTrainingJobSpec(ApiModel):
    """A Keras training run. Immutable once created, like a Job's pod template, except
    runPolicy.suspend: the API server refuses any other change; delete and re-apply the resource to
    train with another spec."""

    rules: ClassVar[tuple[Rule, ...]] = (
        # Several GPUs in one pod are all used (MirroredStrategy, DataParallel); never silently one.
        Rule(
            cel="!has(self.resources) || !has(self.resources.gpus) || self.resources.gpus <= 1 "
            "|| !has(self.backend) || self.backend != 'torch'",
            message="resources.gpus above 1 needs backend tensorflow or jax (each batch is split over the "
            "GPUs); the torch backend trains on one device in this version",
            holds=lambda spec: spec.resources.gpus <= 1 or spec.backend != "torch",
        ),
        # Keras exports a SavedModel from TensorFlow and JAX; from torch its export fails after training.
        Rule(
            cel="!has(self.backend) || self.backend != 'torch' || !has(self.output) || !has(self.output.formats) "
            "|| !self.output.formats.exists(f, f == 'savedmodel')",
            message="output.formats: savedmodel needs backend tensorflow or jax (Keras cannot export a "
            "SavedModel from a torch model); keep keras, which the model server serves on every backend",
            holds=lambda spec: spec.backend != "torch" or "savedmodel" not in spec.output.formats,
        ),
        # Keras 3 cannot train across pods with TensorFlow (keras-team/keras#20585) nor torch: never N
        # copies each training alone.
        Rule(
            cel="!has(self.distribution) || !has(self.distribution.workers) || self.distribution.workers <= 1 "
            "|| (has(self.backend) && self.backend == 'jax')",
            message="distribution.workers above 1 needs backend jax (Keras 3 trains across pods only with "
            "JAX's keras.distribution); with tensorflow or torch, use one worker and give it several GPUs",
            holds=lambda spec: spec.distribution.workers <= 1 or spec.backend == "jax",
        ),
        # The Job's backoffLimit is an int32: backoffLimit group restarts of `workers` pods each.
        Rule(
            cel="!has(self.runPolicy) || !has(self.runPolicy.backoffLimit) || !has(self.distribution) "
            "|| !has(self.distribution.workers) "
            f"|| self.runPolicy.backoffLimit * self.distribution.workers <= {INT32_MAX}",
            message=f"runPolicy.backoffLimit times distribution.workers must be at most {INT32_MAX} (the Job's "
            "backoffLimit counts the pod failures of every worker)",
            holds=lambda spec: spec.run_policy.backoff_limit * spec.distribution.workers <= INT32_MAX,
        ),
        # Two sources of code would leave it unclear which one a module is imported from.
        Rule(
            cel="!has(self.code) || !has(self.model.codeConfigMap)",
            message="code and model.codeConfigMap are two ways to give the code; give one (code.configMap is "
            "the same as model.codeConfigMap)",
            holds=lambda spec: spec.code is None or spec.model.code_config_map is None,
        ),
    )

    backend: Backend = "tensorflow"
    """Keras 3 backend: tensorflow, jax or torch."""
    image: Image | None = None
    """Trainer image; the operator's default when omitted."""
    model: ModelSpec
    """The model to train."""
    data: DataSpec
    """Training and validation data."""
    training: TrainingSpec
    """How to fit the model."""
    resources: Resources = Field(default_factory=Resources)
    """CPU, memory and GPUs per pod."""
    distribution: DistributionSpec = Field(default_factory=DistributionSpec)
    """How many pods train together (backend jax); one by default."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where the model and checkpoints go."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Retries, deadlines, clean-up, queueing."""
    pod_template: PodTemplate | None = None
    """Pod settings merged into the generated pod."""
    code: CodeSpec | None = None
    """The user's Python: custom layers, losses, metrics, the model.callable module. Recorded with the
    run beside its model (code/ and code.json, with a content hash), where a server serving the run finds
    it."""

    def code_source(self) -> CodeSpec | None:
        """spec.code, or model.codeConfigMap as the CodeSpec it is short for."""
        if self.code is None and self.model.code_config_map:
            return CodeSpec(config_map=self.model.code_config_map)
        return self.code


# What may change on a created training: only what the operator applies to a running Job in place
# (controllers/training_reconciler.py flips the Job's suspend; builders/training_manifests.py leaves
# suspend out of the spec hash). Everything else is built into the Job and its pods once; changing
# it would only be reported as SpecApplied=False, so the API server refuses it at apply time instead.
# queueName stays fixed:
# Kueue would take a new queue label on a suspended Job, but the operator never relabels the Job.
# The controller's SpecApplied=False stays the backstop for what CEL misses: Kubernetes compares
# unknown fields (layer arguments, model.config) one way only, so renaming one can get through.
MUTABLE_SPEC_FIELDS = ("runPolicy.suspend",)
IMMUTABLE_HINT = "delete and re-apply the resource to train with another spec (only spec.runPolicy.suspend may change)"
KerasTrainingJobSpec.transition_rules = immutable_fields(
    KerasTrainingJobSpec, mutable=MUTABLE_SPEC_FIELDS, owner="spec", hint=IMMUTABLE_HINT
)


Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]


class Progress(ApiModel):
    """Epochs done so far, how fast, and how long until the end."""

    epoch: Annotated[int, Field(ge=0)] = 0
    """The last finished epoch."""
    epochs: Annotated[int, Field(ge=0)] = 0
    """Epochs in total."""
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Epochs done, as a percentage of all epochs."""
    samples_per_second: float | None = None
    """Training throughput of the last epoch (examples per second, all devices together)."""
    seconds_remaining: Annotated[int, Field(ge=0)] | None = None
    """Estimated time to the last epoch, from the last epoch's duration."""


class WorkerFailure(ApiModel):
    """A worker whose pod failed: the first of its group to fail (JAX then ends the others)."""

    index: int
    """The worker's number (its pod's completion index); worker 0 coordinates and writes the results."""
    pod: str
    """The failed pod."""
    reason: str
    """Why the container ended (Error, OOMKilled, with the exit code) or the pod's reason (Evicted)."""
    message: str
    """The trainer's termination message (its last line), or the pod's message."""


class WorkersStatus(ApiModel):
    """The pods of a training on several workers (spec.distribution.workers above 1)."""

    ready: Annotated[int, Field(ge=0)]
    """Workers whose trainer is running now."""
    total: Annotated[int, Field(ge=1)]
    """Workers of the training (spec.distribution.workers)."""
    last_failure: WorkerFailure | None = None
    """The last worker failure: the Job then restarts the group, from worker 0's last checkpoint."""


class ResumedFrom(ApiModel):
    """Where the last attempt that found a checkpoint resumed, and what the interruption lost."""

    model_config = ConfigDict(extra="ignore")

    epoch: Annotated[int, Field(ge=0)]
    """Epochs already done when it resumed."""
    step: Annotated[int, Field(ge=0)] = 0
    """Steps of the next epoch already done, which it skipped (0: it resumed at an epoch start)."""
    trigger: str | None = None
    """What saved the checkpoint it resumed: epoch (an epoch end), steps or minutes
    (output.checkpoints.every), signal (SIGTERM)."""
    steps_lost: Annotated[int, Field(ge=0)] | None = None
    """Steps the interruption lost: 0 when the checkpoint was saved on SIGTERM; absent when unknown (a kill
    without warning loses up to one checkpoint interval)."""


class LastCheckpoint(ApiModel):
    """The last checkpoint the trainer saved."""

    model_config = ConfigDict(extra="ignore")

    epoch: Annotated[int, Field(ge=0)]
    """Epochs done when it was saved."""
    step: Annotated[int, Field(ge=0)] = 0
    """Steps of the next epoch done when it was saved."""
    trigger: str | None = None
    """What saved it: epoch, steps, minutes or signal."""
    seconds: Annotated[float, Field(ge=0)] | None = None
    """How long saving it took, the upload to a remote output included; compared with
    output.checkpoints.saveSeconds (a CheckpointSlow Warning Event when longer)."""


class KerasTrainingJobStatus(ApiModel):
    """The observed state of the training run."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = None
    """Pending, Queued, Running, Succeeded or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation this status was computed for."""
    conditions: list[Condition] | None = None
    """Valid, Created, Queued, Running, Succeeded, Failed, SpecApplied."""
    job_name: str | None = None
    """The batch/v1 Job running the trainer."""
    start_time: str | None = None
    """When training started (RFC 3339)."""
    completion_time: str | None = None
    """When training ended (RFC 3339)."""
    progress: Progress | None = None
    """Epochs done so far."""
    metrics: dict[str, float] | None = None
    """Metrics of the latest finished epoch (loss, accuracy, val_loss, ...)."""
    model_uri: str | None = None
    """Where the trained model was saved."""
    started_from: str | None = None
    """The model this training started from, resolved: spec.model.trainingJobRef's status.modelUri, or
    the newest complete run of an output folder given as spec.model.uri."""
    devices: int | None = None
    """Devices the training ran on (GPUs of the pod; each batch is split between them)."""
    workers: WorkersStatus | None = None
    """Above one worker: workers running now out of all, and the last one that failed."""
    code_hash: str | None = None
    """The content hash of the code the training ran (spec.code, or the model.callable module), as
    recorded in the run's code.json."""
    tensorboard_uri: str | None = None
    """Where the TensorBoard logs are (spec.output.tensorboard): point `tensorboard --logdir` at it."""
    resumed_from: ResumedFrom | None = None
    """Where the latest attempt resumed from a checkpoint (epoch, step) and the steps that resume lost."""
    last_checkpoint: LastCheckpoint | None = None
    """The last checkpoint saved: where, why and how long saving it took."""
    message: str | None = None
    """A human-readable summary of the current state."""


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta the trainer and the CLI read."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=53, pattern=DNS1123_LABEL)]
    """At most 53 characters: generated objects add suffixes (NAME-train, NAME-canary) and must stay
    within the 63 of a label value and a Service name."""
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)] | None = None
    generation: int | None = None
    uid: str | None = None


class KerasTrainingJob(ApiModel):
    """A whole KerasTrainingJob resource, as read from YAML or the API."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["kerasoperator.dev/v1alpha1"] = API_VERSION
    kind: Literal["KerasTrainingJob"] = KIND
    metadata: ObjectMeta
    spec: KerasTrainingJobSpec
    status: KerasTrainingJobStatus | None = None

    @model_validator(mode="after")
    def _worker_names_fit(self) -> KerasTrainingJob:
        problem = worker_name_problem(self.metadata.name, self.spec)
        if problem:
            raise ValueError(problem)
        return self


def worker_name_problem(name: str, spec: KerasTrainingJobSpec) -> str | None:
    """Why `name` cannot be this training's (None when it can): several workers need a Service NAME-workers
    (a DNS-1035 label: it starts with a letter) and pod hostnames NAME-train-INDEX (a DNS-1123 label: at most
    63 characters)."""
    workers = spec.distribution.workers
    if workers <= 1:
        return None
    if not name[:1].isalpha():
        return (
            f"metadata.name: {name!r} must start with a letter with distribution.workers above 1 "
            "(the workers' Service is named after it)"
        )
    hostname = f"{name}-train-{workers - 1}"
    if len(hostname) > 63:
        return (
            f"metadata.name: too long for {workers} workers: the last pod's hostname {hostname} would "
            "exceed 63 characters"
        )
    return None
