"""Writes the catalogue of the installed Keras that the operator checks specs against without Keras.

    python -m keras_trainer.catalogue --output operator/keras_operator/api/keras_catalogue.json
    python -m keras_trainer.catalogue --output operator/keras_operator/api/keras_catalogue.json --check

The output is named, not found: the trainer writes nothing inside another package by itself.

The operator image has no TensorFlow, so a misspelt layer or argument would only fail in the trainer pod,
maybe after a long queue for a GPU. The catalogue records what this Keras accepts, and for each claim the
operator may reject on, the generator has seen Keras refuse it: a layer's arguments are marked strict only
when Keras refused a made-up argument after accepting the layer without it (the same differential probe
backs every list of names an argument takes). What it cannot probe stays open, so the operator lets it by.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

GENERATED_BY = "python -m keras_trainer.catalogue --output operator/keras_operator/api/keras_catalogue.json"
BOGUS = "zz_not_a_keras_argument"

# Values for required arguments, so each layer can be built once without and once with a made-up
# argument; a layer whose required arguments are not here (a wrapped layer, a cell, a function) stays open.
SAMPLE_ARGS: dict[str, Any] = {
    "units": 2,
    "filters": 2,
    "kernel_size": 2,
    "rate": 0.5,
    "pool_size": 2,
    "output_size": 2,
    "activation": "relu",
    "height": 2,
    "width": 2,
    "axes": 1,
    "equation": "ab,bc->ac",
    "output_shape": 2,
    "input_dim": 4,
    "output_dim": 2,
    "stddev": 0.1,
    "head_dim": 2,
    "num_query_heads": 2,
    "num_key_value_heads": 1,
    "num_bins": 4,
    "max_number": 2,
    "num_heads": 2,
    "key_dim": 2,
    "dims": [1],
    "factor": 0.1,
    "height_factor": 0.1,
    "width_factor": 0.1,
    "n": 2,
    "scale": 0.5,
    "target_shape": [2],
}

# Arguments Keras resolves by name with <module>.get() when the layer is constructed, by suffix, with a name
# each accepts; whether a given layer really resolves it at construction is probed.
NAMED_KINDS: dict[str, tuple[Callable[[str], bool], str]] = {
    "activations": (lambda arg: arg == "activation" or arg.endswith("_activation"), "relu"),
    "initializers": (lambda arg: arg.endswith("_initializer"), "zeros"),
    "regularizers": (lambda arg: arg.endswith("_regularizer"), "l2"),
    "constraints": (lambda arg: arg.endswith("_constraint"), "non_neg"),
}

# Keyword arguments an __init__ takes out of **kwargs by name (LeakyReLU's alpha, Layer's input_shape).
_KWARGS_NAME = re.compile(
    r"""kwargs\.(?:pop|get)\(\s*["'](\w+)["']|["'](\w+)["']\s+(?:not\s+)?in\s+kwargs|kwargs\[\s*["'](\w+)["']\s*\]"""
)


def _quietly(func: Callable[..., Any], *args: Any) -> bool:
    """Whether func(*args) returns without an exception, its warnings and prints swallowed."""
    quiet = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        try:
            func(*args)
        except Exception:  # any refusal counts: which one does not matter here
            return False
    return True


def _signature(func: Any) -> tuple[list[str], list[str], bool]:
    """(argument names, required ones, whether it takes **kwargs) of a callable."""
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p.name for p in named if p.default is p.empty]
    return [p.name for p in named], required, any(p.kind == p.VAR_KEYWORD for p in params)


def _accepted(cls: type) -> set[str] | None:
    """Every argument name any __init__ along the class's MRO names or takes out of **kwargs: a superset
    of what the class accepts, so nothing it accepts is called unknown. None when a source is unreadable."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            names.update(_signature(init)[0])
            source = inspect.getsource(init)
        except (TypeError, ValueError, OSError):
            return None
        for match in _KWARGS_NAME.finditer(source):
            names.add(next(group for group in match.groups() if group))
    return names


def _entry(cls: type, build: Callable[[dict[str, Any]], Any], *, direct: bool = True) -> dict[str, Any]:
    """A constructor's arguments; strict when Keras refuses an argument outside them (checked by building
    it with sample values for its required arguments, then with a made-up argument too). `direct`: build
    calls the constructor itself, so Python refuses what a signature without **kwargs does not name;
    otherwise (from_config, which a class may override) only the probe counts."""
    args, required, var_kwargs = _signature(cls.__init__)
    accepted = _accepted(cls) if var_kwargs else set(args)
    entry: dict[str, Any] = {"required": required}
    sample = {name: SAMPLE_ARGS[name] for name in required if name in SAMPLE_ARGS}
    builds = len(sample) == len(required) and _quietly(build, sample)
    if var_kwargs or not direct:
        strict = accepted is not None and builds and not _quietly(build, {**sample, BOGUS: 1})
    else:
        strict = True  # Python itself refuses a keyword the signature does not name
    entry["args"] = sorted(accepted if accepted is not None else args)
    entry["strict"] = strict
    entry["probed"] = builds
    if builds:
        named = {}
        for arg in entry["args"]:
            for kind, (matches, good) in NAMED_KINDS.items():
                if (
                    matches(arg)
                    and _quietly(build, {**sample, arg: good})
                    and not _quietly(build, {**sample, arg: BOGUS})
                ):
                    named[arg] = kind
        if named:
            entry["names"] = named
    return entry


def _names(module: Any, objects: dict[str, Any]) -> list[str]:
    """The names <module>.get() resolves, from the table it looks them up in, each confirmed."""
    return sorted(name for name in objects if _quietly(module.get, name))


def _layers() -> dict[str, Any]:
    layers = {}
    for name in sorted(dir(keras.layers)):
        cls = getattr(keras.layers, name)
        # What the trainer accepts as a layer type (models._sequential).
        if name.startswith("_") or not isinstance(cls, type) or not issubclass(cls, keras.layers.Layer):
            continue
        layers[name] = _entry(cls, lambda kwargs, cls=cls: cls(**kwargs))
    return layers


def _optimizers() -> dict[str, Any]:
    from keras.src.optimizers import ALL_OBJECTS_DICT

    optimizers = {}
    for name, cls in sorted(ALL_OBJECTS_DICT.items()):
        # The trainer's call: keras.optimizers.get({"class_name": name, "config": args}).
        entry = _entry(
            cls, lambda kwargs, name=name: keras.optimizers.get({"class_name": name, "config": kwargs}), direct=False
        )
        optimizers[name] = {"class": cls.__name__, **entry}
    return optimizers


def _losses() -> dict[str, Any]:
    from keras.src.losses import ALL_OBJECTS_DICT

    classes = {}
    for name, obj in sorted(ALL_OBJECTS_DICT.items()):
        if inspect.isclass(obj):
            classes[name] = _entry(
                obj, lambda kwargs, name=name: keras.losses.get({"class_name": name, "config": kwargs}), direct=False
            )
    return {"names": _names(keras.losses, ALL_OBJECTS_DICT), "classes": classes}


def _applications() -> dict[str, Any]:
    apps = {}
    for name in sorted(dir(keras.applications)):
        factory = getattr(keras.applications, name)
        # What the trainer accepts (models._application): a public callable, not a submodule.
        if name.startswith("_") or not callable(factory) or inspect.ismodule(factory):
            continue
        args, required, var_kwargs = _signature(factory)
        apps[name] = {"args": args, "required": required, "strict": not var_kwargs}
    return apps


def _classes(module: Any, base: type) -> dict[str, Any]:
    """The public subclasses of `base` in `module` (what the trainer builds by name), with their arguments."""
    found = {}
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if name.startswith("_") or not isinstance(cls, type) or not issubclass(cls, base) or cls is base:
            continue
        args, required, var_kwargs = _signature(cls.__init__)
        found[name] = {"args": args, "required": required, "strict": not var_kwargs}
    return found


def generate() -> dict[str, Any]:
    from keras.src import activations, constraints, initializers, metrics, regularizers

    return {
        "kerasVersion": keras.__version__,
        # Probed on this backend; the names do not depend on it, a few layers' constructors might.
        "backend": keras.backend.backend(),
        "generatedBy": GENERATED_BY,
        "layers": _layers(),
        "optimizers": _optimizers(),
        "losses": _losses(),
        # The trainer checks each with keras.metrics.get, except accuracy and acc (Keras picks the kind).
        "metrics": sorted({*_names(keras.metrics, metrics.ALL_OBJECTS_DICT), "accuracy", "acc"}),
        "activations": _names(keras.activations, activations.ALL_OBJECTS_DICT),
        "initializers": _names(keras.initializers, initializers.ALL_OBJECTS_DICT),
        "regularizers": _names(keras.regularizers, regularizers.ALL_OBJECTS_DICT),
        "constraints": _names(keras.constraints, constraints.ALL_OBJECTS_DICT),
        "applications": _applications(),
        # keras_trainer.fit_options builds these by class name.
        "schedules": _classes(keras.optimizers.schedules, keras.optimizers.schedules.LearningRateSchedule),
        "callbacks": _classes(keras.callbacks, keras.callbacks.Callback),
    }


def dumps(catalogue: dict[str, Any]) -> str:
    return json.dumps(catalogue, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_trainer.catalogue", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from this Keras")
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write (or check)")
    args = parser.parse_args(argv)
    text = dumps(generate())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date with Keras {keras.__version__}: run {GENERATED_BY}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} (Keras {keras.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
