"""A loaded model with a named signature: what both protocols describe and call."""

from __future__ import annotations

import bisect
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from keras_trainer import storage, usercode
from keras_trainer.errors import SpecError

log = structlog.get_logger("keras_server")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]  # the first dimension is the batch
    # A handler's request input: its values are taken as given (any type, any shape), for the handler's
    # preprocess to make model inputs of.
    raw: bool = False

    def example_shape(self) -> tuple[int | None, ...]:
        return self.shape[1:]


class ModelLoadError(Exception):
    pass


class ServedModel:
    """Wraps a Keras model (or an exported SavedModel) behind dicts of named numpy arrays."""

    def __init__(self, model: Any, name: str, version: str = "1") -> None:
        self.model, self.name, self.version = model, name, version
        self.inputs = self._input_specs()
        self.outputs = self._output_specs()
        self.load_seconds = 0.0
        self.run: dict[str, str] | None = None  # the training run served, when the URI named its output folder
        self.ready = False
        self.compiled = False  # True once warm-up proved the XLA-compiled call works for this model
        self._xla: Any = None
        # The batch shapes a model call may see: warm-up compiles these, predict pads up to one of them.
        self.batch_sizes: tuple[int, ...] = (1,)

    @classmethod
    def load(cls, uri: str, name: str, version: str = "1", staging: Path | None = None) -> ServedModel:
        """`staging`: where a remote model is downloaded to (default: a new temporary folder)."""
        import keras

        started = time.perf_counter()
        try:
            # A run's model comes with the code it was trained with (custom layers, losses...), recorded
            # beside it: imported first, so Keras finds the classes the saved model names.
            code = usercode.recorded(uri)
            if code is not None:
                usercode.activate(code, "recorded code")
                log.info(
                    "recorded_code_imported", model=name, modules=code.imports, code_hash=code.source.get("recorded")
                )
            path = storage.fetch(uri, staging)
            if path.is_dir() and (path / "saved_model.pb").exists():
                model = _saved_model(path)
            else:
                model = keras.models.load_model(path, compile=False)
        except (storage.StorageError, SpecError) as exc:
            raise ModelLoadError(str(exc)) from exc
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"cannot load a Keras model from {uri}: {exc}") from exc
        served = cls(model, name, version)
        served.load_seconds = time.perf_counter() - started
        return served

    def _input_specs(self) -> list[TensorSpec]:
        tensors = list(self.model.inputs)
        specs = []
        for index, t in enumerate(tensors):
            # Keras generates names (keras_tensor_12, input_layer_3) that change with build order: give
            # those stable ones; names the model's author chose are kept.
            generated = re.fullmatch(r"(keras_tensor|input_layer)(_\d+)?", t.name) is not None
            name = ("input" if len(tensors) == 1 else f"input_{index}") if generated else t.name
            specs.append(TensorSpec(name, numpy_dtype(t.dtype), tuple(t.shape)))
        self._keras_input_names = [t.name for t in tensors]
        return specs

    def _output_specs(self) -> list[TensorSpec]:
        tensors = list(self.model.outputs)
        names = list(getattr(self.model, "output_names", None) or [])
        if len(names) != len(tensors):
            names = ["output" if len(tensors) == 1 else f"output_{i}" for i in range(len(tensors))]
        return [TensorSpec(n, numpy_dtype(t.dtype), tuple(t.shape)) for n, t in zip(names, tensors, strict=True)]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows are padded up to the next of the batch sizes warm-up compiled, so the compiled function
        sees no other batch shape (each new shape costs a retrace of 100+ ms: the tail latency of a
        batching server)."""
        rows = next(iter(inputs.values())).shape[0]
        padded = bucket(rows, self.batch_sizes)
        if padded != rows:
            inputs = {n: np.concatenate([a, _dummy_like(a, padded - rows)]) for n, a in inputs.items()}
        return {n: a[:rows] for n, a in self._call(inputs).items()}

    def _call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1:
            x: Any = inputs[self.inputs[0].name]
        else:
            x = {
                keras_name: inputs[spec.name]
                for keras_name, spec in zip(self._keras_input_names, self.inputs, strict=True)
            }
        y = self._xla(x) if self.compiled else self.model.predict_on_batch(x)
        if isinstance(y, dict):
            return {spec.name: np.asarray(y[spec.name]) for spec in self.outputs}
        if isinstance(y, list | tuple):
            return {spec.name: np.asarray(v) for spec, v in zip(self.outputs, y, strict=True)}
        return {self.outputs[0].name: np.asarray(y)}

    def warm_up(self, max_batch_size: int = 1, batch_sizes: Sequence[int] | None = None) -> None:
        """Call the model once per batch shape it will see (`batch_sizes`, default powers of two up to
        `max_batch_size`), so no user request pays for tracing; when XLA compiled the model, keep
        whichever call is faster at the largest batch (XLA wins on some models and loses on others:
        bench/README.md)."""
        sizes = list(batch_sizes or default_batch_sizes(max_batch_size))
        self.batch_sizes = tuple(sizes)
        self._try_xla()
        seconds: dict[bool, float] = {}
        for compiled in [True, False] if self.compiled else [False]:
            self.compiled = compiled
            for size in sizes:
                self.predict(self._dummies(size))
            largest = self._dummies(sizes[-1])
            seconds[compiled] = min(_timed(self.predict, largest) for _ in range(5))
        self.compiled = min(seconds, key=seconds.__getitem__)
        self.ready = True

    def _dummies(self, rows: int) -> dict[str, np.ndarray]:
        return {spec.name: _dummy(spec, rows) for spec in self.inputs}

    def _try_xla(self) -> None:
        """Keras models on TensorFlow run as one XLA-compiled function when XLA can compile them: on
        CPU it computes the digits MLP's batches 1.4x faster than predict_on_batch (bench/README.md). Models
        XLA cannot compile (string lookups, some custom ops) keep predict_on_batch."""
        import keras

        if keras.backend.backend() != "tensorflow" or isinstance(self.model, _SavedModel):
            return
        if os.environ.get("KERAS_SERVER_XLA", "1").lower() in ("0", "false", "no"):
            return  # an escape hatch, and the benchmark's A/B switch
        import tensorflow as tf

        model = self.model
        function = tf.function(lambda x: model(x, training=False), jit_compile=True)
        specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs]
        try:
            # One concrete function for every batch size (XLA still compiles each padded size once, at
            # warm-up): calling it skips tf.function's signature matching, which took half of each call
            # to the digits MLP (~330 -> ~170 µs), time the model thread also holds the GIL.
            signature = specs[0] if len(specs) == 1 else dict(zip(self._keras_input_names, specs, strict=True))
            self._xla = function.get_concrete_function(signature)
            self.compiled = True
            self.predict(self._dummies(1))
        except Exception as exc:  # any failure to compile means: not for this model
            self.compiled, self._xla = False, None
            log.info("xla_unavailable", model=self.name, reason=f"{type(exc).__name__}: {str(exc)[:200]}")


def _timed(fn: Any, arg: Any) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def _filled(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    return np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype=dtype)


def _dummy(spec: TensorSpec, rows: int) -> np.ndarray:
    return _filled((rows, *[d or 1 for d in spec.example_shape()]), spec.dtype)


def _dummy_like(array: np.ndarray, rows: int) -> np.ndarray:
    return _filled((rows, *array.shape[1:]), array.dtype)


def numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """Keras/TF dtype names -> numpy; strings travel as Python objects (bytes or str)."""
    name = str(getattr(dtype, "name", dtype))
    return np.dtype(object) if name == "string" else np.dtype(name)


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below `max_batch_size`, then `max_batch_size` itself: a batch is never padded past
    the largest the batcher forms."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] < max_batch_size:
        sizes.append(max_batch_size)
    return tuple(sizes)


def bucket(rows: int, sizes: Sequence[int] = (1,)) -> int:
    """The smallest of `sizes` (ascending) that holds `rows`. Past the largest (only callers other than
    the batcher, which never forms larger batches), the next power of two."""
    index = bisect.bisect_left(sizes, rows)
    if index < len(sizes):
        return sizes[index]
    size = 1
    while size < rows:
        size *= 2
    return size


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int | None, ...]
    dtype: str


class _SavedModel:
    """An exported SavedModel's serving_default signature, shaped like the Keras API ServedModel reads."""

    def __init__(self, path: Any) -> None:
        import tensorflow as tf

        self._tf = tf
        loaded = tf.saved_model.load(str(path))
        if "serving_default" not in loaded.signatures:
            raise ModelLoadError(f"{path}: the SavedModel has no serving_default signature")
        self._fn = loaded.signatures["serving_default"]
        self._loaded = loaded  # the signature needs its object alive
        args = self._fn.structured_input_signature[1]
        self.inputs = [_Tensor(n, tuple(t.shape), t.dtype.name) for n, t in sorted(args.items())]
        outs = self._fn.structured_outputs
        self.outputs = [_Tensor(n, tuple(t.shape), t.dtype.name) for n, t in sorted(outs.items())]
        self.output_names = [t.name for t in self.outputs]

    def predict_on_batch(self, x: Any) -> dict[str, np.ndarray]:
        feeds = x if isinstance(x, dict) else {self.inputs[0].name: x}
        result = self._fn(**{name: self._tf.constant(value) for name, value in feeds.items()})
        return {name: value.numpy() for name, value in result.items()}


def _saved_model(path: Any) -> Any:
    return _SavedModel(path)
