"""Checks the free-form parts of a training spec (layer types and arguments, optimizer, loss, metrics,
activations, applications) against the catalogue of the pinned Keras, without importing Keras.

A spec refused here would certainly fail in the trainer; everything this cannot be sure of is let by, for
the trainer to judge, because refusing a valid spec is worse than a late failure. So nothing is checked:
- with spec.image set: another image may hold another Keras, or register objects of its own;
- where a different Keras is installed in this process's environment (a local run): that Keras judges;
- in the trainer (keras_judges): its Keras checks the same things moments later, in its own words;
- in spec.model.config: a full Keras config (nested layers, registered classes, functional graphs) would
  need Keras' own deserializer to check reliably;
- values that are not names (a dict config of an initializer, a loss's args values), and registered
  names ("package>Name");
- optimizer, loss, metric and other names when custom code is loaded (callable, code, codeConfigMap): it may
  register objects under any name;
- arguments of a layer, optimizer or loss the generator could not probe (marked not strict: they take
  **kwargs Keras passes on, or need arguments a YAML value cannot give, like a wrapped layer).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib.metadata
import json
from collections.abc import Iterator
from importlib import resources
from types import MappingProxyType
from typing import Any

from pydantic.alias_generators import to_snake

from keras_operator.api.training_job import REFUSED_CALLBACKS

CATALOGUE_FILE = "keras_catalogue.json"
_keras_judges: contextvars.ContextVar[bool] = contextvars.ContextVar("keras_judges", default=False)


@contextlib.contextmanager
def keras_judges() -> Iterator[None]:
    """Parse without the catalogue: for the trainer, whose own Keras is about to judge the spec."""
    token = _keras_judges.set(True)
    try:
        yield
    finally:
        _keras_judges.reset(token)


# Names Keras resolves to an abstract base class: `keras.losses.get("Loss")` returns a Loss whose call()
# raises NotImplementedError once training starts, and likewise Metric (update_state), Optimizer
# (update_step), Initializer (__call__) and Layer (no call()). The catalogue lists them because get() takes
# them; they are no usable choice, so they are refused and never suggested (`my_loss` must not get "did you
# mean 'Loss'?"). Regularizer and Constraint are left: their base classes are working no-ops.
ABSTRACT = MappingProxyType(
    {
        "losses": frozenset({"Loss"}),
        "metrics": frozenset({"Metric", "metric"}),
        "optimizers": frozenset({"optimizer"}),
        "initializers": frozenset({"Initializer", "initializer"}),
        "layers": frozenset({"Layer"}),
    }
)


def _without_abstract(cat: dict[str, Any]) -> dict[str, Any]:
    def drop(value: Any, names: frozenset[str]) -> Any:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k not in names}
        return [v for v in value if v not in names]

    out = dict(cat)
    for kind, names in ABSTRACT.items():
        if kind == "losses":
            out[kind] = {part: drop(value, names) for part, value in cat[kind].items()}
        else:
            out[kind] = drop(cat[kind], names)
    return out


@functools.cache
def load() -> dict[str, Any]:
    """The catalogue written by `python -m keras_trainer.catalogue`, without the abstract base classes."""
    return _without_abstract(json.loads(resources.files("keras_operator.api").joinpath(CATALOGUE_FILE).read_text()))


@functools.cache
def _installed_keras() -> str | None:
    try:
        return importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return None


def _normal(name: str) -> str:
    return name.lower().replace("_", "")


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) from a to b: `adma` is one from `adam`."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def _closest(name: str, choices: list[str]) -> str | None:
    # Among spellings of one name (mse, MSE), the one written the way the user writes.
    lower_first = sorted(choices, key=lambda c: (c.islower() != name.islower(), c))
    by_normal: dict[str, str] = {}
    for choice in lower_first:
        by_normal.setdefault(_normal(choice), choice)
    if _normal(name) in by_normal:  # dense, kernelSize, glorotuniform
        return by_normal[_normal(name)]
    wanted = _normal(name)
    one_edit = [n for n in by_normal if _distance(wanted, n) == 1]  # MobileNetV4: MobileNetV2, not MobileNet
    if one_edit:
        return by_normal[min(one_edit)]
    # A known name inside the unknown one (SuperDense, Conv2DX): the longest such.
    inside = [n for n in by_normal if len(n) >= 4 and n in wanted]
    if inside:
        return by_normal[max(inside, key=len)]
    close = difflib.get_close_matches(wanted, list(by_normal), n=5, cutoff=0.6)
    if not close:
        return None
    return by_normal[min(close, key=lambda n: (_distance(wanted, n), close.index(n)))]


def did_you_mean(name: str, choices: list[str]) -> str:
    """` (did you mean 'X'?)` for the closest choice, or ''. Case and underscores count for nothing
    (dense, kernelSize); then a name one edit away (adma: adam rather than adamax), a known name inside the
    unknown one (SuperDense: Dense), and the fewest edits among difflib's close matches."""
    closest = _closest(name, choices)
    return f" (did you mean {closest!r}?)" if closest else ""


def _unknown_args(field: str, owner: str, entry: dict[str, Any], args: dict[str, Any]) -> list[str]:
    if not entry.get("strict"):
        return []
    return [
        f"{field}.{arg}: {owner} has no argument {arg!r}{did_you_mean(arg, entry['args'])}"
        for arg in args
        if arg not in entry["args"]
    ]


def _name(field: str, kind: str, value: Any, names: list[str]) -> list[str]:
    if not isinstance(value, str) or ">" in value or value in names:
        return []
    return [f"{field}: unknown {kind} {value!r}{did_you_mean(value, names)}"]


def _layers(spec: Any, cat: dict[str, Any]) -> list[str]:
    return _layer_list("spec.model.layers", spec.model.layers, cat) + _layer_list(
        "spec.model.head", getattr(spec.model, "head", None), cat
    )


def _layer_list(where: str, layers: Any, cat: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for index, layer in enumerate(layers or []):
        field = f"{where}[{index}]"
        entry = cat["layers"].get(layer.type)
        if entry is None:
            problems.append(
                f"{field}.type: unknown layer {layer.type!r}{did_you_mean(layer.type, list(cat['layers']))}"
            )
            continue
        args = layer.extra_args()
        problems += _unknown_args(field, layer.type, entry, args)
        # Python refuses a call without a required argument, whatever the layer does with **kwargs.
        problems += [f"{field}: {layer.type} needs argument {name!r}" for name in entry["required"] if name not in args]
        for arg, kind in entry.get("names", {}).items():
            problems += _name(f"{field}.{arg}", kind.removesuffix("s"), args.get(arg), cat[kind])
    return problems


def _application(spec: Any, cat: dict[str, Any]) -> list[str]:
    app = spec.model.application
    if app is None:
        return []
    entry = cat["applications"].get(app.name)
    if entry is None:
        hint = did_you_mean(app.name, list(cat["applications"]))
        return [f"spec.model.application.name: unknown application {app.name!r}{hint}"]
    args = app.args or {}
    # The trainer passes application.weights itself: the same keyword twice is a TypeError.
    problems = ["spec.model.application.args.weights: set spec.model.application.weights instead"] * ("weights" in args)
    problems += _unknown_args("spec.model.application.args", app.name, entry, args)
    return problems


def _training(spec: Any, cat: dict[str, Any]) -> list[str]:
    training = spec.training
    problems: list[str] = []
    opt = training.optimizer
    # The trainer's keras.optimizers.get takes the built-in names whatever their case.
    entry = cat["optimizers"].get(opt.name.lower())
    if entry is None:
        if ">" not in opt.name:
            names = list(cat["optimizers"])
            problems.append(
                f"spec.training.optimizer.name: unknown optimizer {opt.name!r}{did_you_mean(opt.name, names)}"
            )
    else:
        problems += _unknown_args("spec.training.optimizer", entry["class"], entry, opt.extra_args())
    losses = cat["losses"]
    if isinstance(training.loss, str):
        problems += _name("spec.training.loss", "loss", training.loss, losses["names"])
    elif isinstance(training.loss.get("name"), str):
        name = training.loss["name"]
        problems += _name("spec.training.loss.name", "loss", name, losses["names"])
        args = training.loss.get("args")
        if name in losses["classes"] and isinstance(args, dict):
            problems += _unknown_args("spec.training.loss.args", name, losses["classes"][name], args)
    for index, metric in enumerate(training.metrics):
        problems += _name(f"spec.training.metrics[{index}]", "metric", metric, cat["metrics"])
    return problems


def _class_args(field: str, name: str, entry: dict[str, Any], args: dict[str, Any]) -> list[str]:
    """A schedule's or callback's arguments (the trainer takes them in camelCase too)."""
    snake = {to_snake(k): k for k in args}
    found = [f"{field}: {name} needs argument {arg!r}" for arg in entry["required"] if arg not in snake]
    if entry.get("strict"):
        found += [
            f"{field}.{given}: {name} has no argument {given!r}{did_you_mean(arg, entry['args'])}"
            for arg, given in snake.items()
            if arg not in entry["args"]
        ]
    return found


def _schedule(field: str, rate: Any, cat: dict[str, Any]) -> list[str]:
    if not hasattr(rate, "name"):
        return []  # a number
    entry = cat["schedules"].get(rate.name)
    if entry is None:
        hint = did_you_mean(rate.name, list(cat["schedules"]))
        return [f"{field}.name: unknown learning-rate schedule {rate.name!r}{hint}"]
    return _class_args(f"{field}.args", rate.name, entry, rate.args or {})


def _knobs(spec: Any, cat: dict[str, Any]) -> list[str]:
    """Schedules and callbacks: Keras classes the trainer takes by name (no registry: custom code adds none)."""
    training = spec.training
    found = _schedule("spec.training.optimizer.learningRate", training.optimizer.learning_rate, cat)
    for index, phase in enumerate(training.phases or []):
        found += _schedule(f"spec.training.phases[{index}].learningRate", phase.learning_rate, cat)
    usable = [n for n in cat["callbacks"] if n not in REFUSED_CALLBACKS]
    for index, callback in enumerate(training.callbacks or []):
        field = f"spec.training.callbacks[{index}]"
        if callback.name in REFUSED_CALLBACKS:
            found.append(f"{field}.name: {callback.name} cannot be given here: {REFUSED_CALLBACKS[callback.name]}")
        elif callback.name not in cat["callbacks"]:
            found.append(f"{field}.name: unknown callback {callback.name!r}{did_you_mean(callback.name, usable)}")
        else:
            found += _class_args(f"{field}.args", callback.name, cat["callbacks"][callback.name], callback.args or {})
    return found


def problems(resource: Any) -> list[str]:
    """What is certainly wrong in a KerasTrainingJob or its spec, one `field: message` each; [] for
    anything else, or when the catalogue cannot judge (see the module's docstring)."""
    spec = getattr(resource, "spec", resource)
    if _keras_judges.get() or not hasattr(spec, "model") or not hasattr(spec, "training"):
        return []  # not a training
    cat = load()
    installed = _installed_keras()
    if spec.image is not None or (installed is not None and installed != cat["kerasVersion"]):
        return []
    try:
        found = _layers(spec, cat) + _application(spec, cat) + _knobs(spec, cat)
        if not (spec.model.callable or spec.model.code_config_map or getattr(spec, "code", None)):
            found += _training(spec, cat)
    except Exception:
        # A bug here must not refuse a spec the trainer would take; the trainer still checks it all.
        return []
    return found
