"""User pre- and post-processing in the server's own process: `--handler module:Class`.

The class is imported and instantiated once, when the server starts (before it listens, so a handler
that cannot be loaded stops the server at once: exit 1, one line). Its `preprocess(inputs)` turns the
request values of a whole batch into model inputs; its `postprocess(outputs)` turns the model's outputs
for that batch into the answer. Either may be left out. Both run in the model's thread, between the
batcher and the model, so they see the batch the batcher formed, never block the event loop, and add no
pod and no network hop (KServe's transformer is a second pod).

What user code does wrong fails the requests of its batch, never the server:
- preprocess raising ValueError, TypeError or KeyError (UnicodeError and the like are ValueErrors): the
  request held values the handler does not take, a 400;
- preprocess raising anything else, postprocess raising anything, or either returning what does not fit
  (not the batch's number of rows, model inputs of the wrong type or shape): a bug of the handler, a 500.
Each answer names the handler and the method: `handler text_handler:Tokens.preprocess: ValueError: ...`.
The contract, with an example: docs/serving.md, "Pre- and post-processing".
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from keras_operator.api.model_service import HANDLER_REF
from keras_server.codec import RequestError, to_array
from keras_server.model import TensorSpec

Arrays = dict[str, np.ndarray]
log = structlog.get_logger("keras_server")

# What preprocess raises about values it cannot take: the client's to fix, so a 400.
BAD_REQUEST = (ValueError, TypeError, KeyError)
MAX_MESSAGE = 500


class HandlerLoadError(Exception):
    """The handler cannot be imported or instantiated: one line, the server stops with exit 1."""


class HandlerError(RequestError):
    """A failure of the handler's code, answered as JSON with the status it decided (400 or 500)."""

    def __init__(self, status: int, stage: str, message: str) -> None:
        super().__init__(status, message)
        self.stage = stage


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    text = text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _rows(arrays: Arrays) -> int:
    return next(iter(arrays.values())).shape[0]


@dataclass(frozen=True)
class Handler:
    ref: str  # module:Class, as given
    preprocess: Callable[[Arrays], Any] | None
    postprocess: Callable[[Arrays], Any] | None
    inputs: tuple[str, ...] | None  # the request's input names, when the class declares them

    def request_specs(self, model_inputs: list[TensorSpec]) -> list[TensorSpec]:
        """What a request must carry: with a preprocess, the handler's inputs (default: the model's input
        names) taking any values; without one, the model's own inputs."""
        if self.preprocess is None:
            return model_inputs
        names = self.inputs or tuple(s.name for s in model_inputs)
        return _raw_specs(names)

    def run(self, model_inputs: list[TensorSpec], predict: Callable[[Arrays], Arrays], inputs: Arrays) -> Arrays:
        """One batch through preprocess, the model and postprocess. Raises HandlerError."""
        rows = _rows(inputs)
        if self.preprocess is not None:
            made = self._call("preprocess", self.preprocess, inputs)
            inputs = self._model_inputs(made, model_inputs, rows)
        outputs = predict(inputs)
        if self.postprocess is not None:
            outputs = self._answer(self._call("postprocess", self.postprocess, outputs), rows)
        return outputs

    def _call(self, stage: str, method: Callable[[Arrays], Any], arrays: Arrays) -> Any:
        try:
            return method(arrays)
        except Exception as exc:
            status = 400 if stage == "preprocess" and isinstance(exc, BAD_REQUEST) else 500
            message = f"handler {self.ref}.{stage}: {_one_line(exc)}"
            if status == 500:  # the handler's bug: its traceback is for the server's log, not the client
                log.error("handler_failed", handler=self.ref, stage=stage, exc_info=exc)
            raise HandlerError(status, stage, message) from exc

    def _fault(self, stage: str, message: str) -> HandlerError:
        log.error("handler_failed", handler=self.ref, stage=stage, error=message)
        return HandlerError(500, stage, f"handler {self.ref}.{stage} {message}")

    def _model_inputs(self, made: Any, specs: list[TensorSpec], rows: int) -> Arrays:
        if not isinstance(made, dict):
            if len(specs) != 1:
                raise self._fault("preprocess", f"must return a dict of the model's inputs {[s.name for s in specs]}")
            made = {specs[0].name: made}
        if set(made) != {s.name for s in specs}:
            raise self._fault(
                "preprocess", f"returned inputs {sorted(made)}; the model takes {sorted(s.name for s in specs)}"
            )
        try:
            arrays = {s.name: to_array(made[s.name], s, "returned") for s in specs}
        except RequestError as exc:  # what the model refuses is the handler's doing, not the client's
            raise self._fault("preprocess", exc.message) from exc
        self._same_rows("preprocess", arrays, rows)
        return arrays

    def _answer(self, made: Any, rows: int) -> Arrays:
        if not isinstance(made, dict) or not made or not all(isinstance(k, str) for k in made):
            raise self._fault("postprocess", "must return a non-empty dict of output name -> one value per row")
        arrays = {}
        for name, value in made.items():
            try:
                array = np.asarray(value)
            except ValueError:  # ragged rows
                array = np.empty(len(value), dtype=object)
                for index, row in enumerate(value):
                    array[index] = row
            if array.dtype.kind in ("U", "S"):  # as the codec writes text: Python objects
                array = array.astype(object)
            if array.ndim == 0:
                raise self._fault("postprocess", f"returned {name!r} as one value, not one per row")
            arrays[name] = array
        self._same_rows("postprocess", arrays, rows)
        return arrays

    def _same_rows(self, stage: str, arrays: Arrays, rows: int) -> None:
        got = sorted({a.shape[0] for a in arrays.values()})
        if got != [rows]:
            # Rows are how the batch's answer is split back into its requests: a handler must keep them.
            raise self._fault(stage, f"returned {got} rows for a batch of {rows}; it must keep one row per example")


@functools.lru_cache(maxsize=16)  # per request otherwise: the names are few and fixed
def _raw_specs(names: tuple[str, ...]) -> list[TensorSpec]:
    return [TensorSpec(n, np.dtype(object), (None,), raw=True) for n in names]


def load(ref: str) -> Handler:
    """Import module:Class and instantiate it. Raises HandlerLoadError with one line saying why not."""
    if re.fullmatch(HANDLER_REF, ref) is None:
        raise HandlerLoadError(f"--handler must be module:Class, got {ref!r}")
    module_name, class_name = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one that fails as it is imported
        raise HandlerLoadError(f"handler {ref}: cannot import {module_name!r}: {_one_line(exc)}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise HandlerLoadError(f"handler {ref}: module {module_name!r} has no class {class_name!r}")
    try:
        instance = cls()
    except Exception as exc:
        raise HandlerLoadError(f"handler {ref}: {class_name}() failed: {_one_line(exc)}") from None
    methods = {}
    for name in ("preprocess", "postprocess"):
        method = getattr(instance, name, None)
        if method is not None and not callable(method):
            raise HandlerLoadError(f"handler {ref}: {name} is not a method")
        methods[name] = method
    if not any(methods.values()):
        raise HandlerLoadError(f"handler {ref}: {class_name} has neither preprocess nor postprocess")
    inputs = getattr(instance, "inputs", None)
    if inputs is not None and (
        isinstance(inputs, str) or not inputs or not all(isinstance(n, str) and n for n in inputs)
    ):
        raise HandlerLoadError(f"handler {ref}: inputs must be a non-empty list of input names, got {inputs!r}")
    log.info("handler_loaded", handler=ref, **{k: v is not None for k, v in methods.items()})
    return Handler(ref, methods["preprocess"], methods["postprocess"], tuple(inputs) if inputs else None)
