"""Before a run is marked complete: does its saved model load and predict the same in a fresh process
that has only the recorded code (and the installed packages)? A model that cannot be served fails its
training, naming what is missing, instead of failing the KerasModelService that serves it later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from keras_trainer.usercode import Code

EXAMPLES = 4
CHECK_SECONDS = 600
TIGHT = (1e-3, 1e-4)
"""(rtol, atol) for a model trained on the CPU in float32, reloaded on the CPU."""
LOOSE = (1e-2, 1e-3)
"""For a model trained on GPUs (TF32 matmuls) or in mixed precision: the reload runs on the CPU. A missing
or misconfigured custom object (a get_config that loses an argument) still differs by far more."""

# Run with `python -I`: no PYTHONPATH, no current folder, no user site; the recorded code and its
# requirements are the only additions to the packages. Self-contained: the trainer's own modules are
# not what a server has to import.
_SCRIPT = r"""
import importlib, json, os, sys
out, model_path, folder, packages, imports = sys.argv[1:6]
def answer(**kw):
    with open(os.path.join(out, "answer.json"), "w") as f:
        json.dump(kw, f)
    sys.exit(0)
try:
    for p in (folder, packages):
        if p:
            sys.path.insert(0, p)
    for name in json.loads(imports):
        importlib.import_module(name)
    import numpy as np
    import keras
    x = dict(np.load(os.path.join(out, "inputs.npz"), allow_pickle=False))
    x = x["x"] if list(x) == ["x"] else x
    if model_path.endswith(".keras"):
        y = keras.models.load_model(model_path, compile=False).predict_on_batch(x)
        got = [np.asarray(v) for v in keras.tree.flatten(y)]
    else:
        import tensorflow as tf
        fn = tf.saved_model.load(model_path).signatures["serving_default"]
        args = fn.structured_input_signature[1]
        feeds = {next(iter(args)): x} if not isinstance(x, dict) else x
        y = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        got = [y[k].numpy() for k in sorted(y)]
except BaseException as e:
    import re
    text = str(e).strip()
    # Keras wraps the missing class's error in a long one about the model: name what is missing.
    missing = re.search(r"(Could not locate (class|function) '[^']+')|(Unknown [a-z _]+: '[^']+')", text)
    if missing:
        answer(error=missing.group(0) + " (is it registered with keras.saving.register_keras_serializable "
               "at the import of a module of the code?)")
    answer(error=type(e).__name__ + (": " + text.splitlines()[0][:400] if text else ""))
expected = np.load(os.path.join(out, "expected.npz"), allow_pickle=False)
want = [expected[f"y{i}"] for i in range(len(expected.files))]
if not want:
    answer(ok=True)
if len(got) != len(want):
    answer(error=f"the loaded model has {len(got)} outputs, the trained one {len(want)}")
for i, (a, b) in enumerate(zip(got, want)):
    if a.shape != b.shape:
        answer(error=f"output {i}: shape {list(a.shape)}, the trained model's {list(b.shape)}")
    if not np.allclose(a.astype("float64"), b.astype("float64"), rtol=float(sys.argv[6]), atol=float(sys.argv[7])):
        diff = float(np.max(np.abs(a.astype("float64") - b.astype("float64"))))
        answer(error=f"output {i} differs from the trained model's by up to {diff:.3g}")
answer(ok=True)
"""


class Unservable(Exception):
    """The saved model does not load, or predicts otherwise, with only the recorded code; str() says why."""


def examples(x: Any, dataset: Any) -> Any:
    """A few training inputs: the first rows of the arrays, or of the dataset's first batch."""
    if x is None and dataset is not None:
        first = next(iter(dataset))
        x = first[0] if isinstance(first, tuple | list) else first
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: np.asarray(v)[:EXAMPLES] for k, v in x.items()}
    return np.asarray(x)[:EXAMPLES]


def check(model: Any, saved: Path, code: Code | None, x: Any, tolerance: tuple[float, float] = TIGHT) -> float:
    """Load `saved` in a fresh process with only `code`, predict on `x` and compare with `model`'s
    predictions; -> seconds it took. Unservable when it does not load or predicts otherwise.

    The fresh process sees no GPU: the trainer still holds the GPUs' memory (TensorFlow takes it all),
    and 4 examples need none."""
    import keras

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keras-servable-") as out:
        want = [np.asarray(v) for v in keras.tree.flatten(model.predict_on_batch(x))]
        if saved.suffix != ".keras" and len(want) > 1:
            want = []  # a SavedModel's outputs come by name, not in the model's order: load and call only
        np.savez(Path(out) / "inputs.npz", **(x if isinstance(x, dict) else {"x": x}))
        np.savez(Path(out) / "expected.npz", **{f"y{i}": v for i, v in enumerate(want)})
        command = [sys.executable, "-I", "-c", _SCRIPT, out, str(saved)]
        command += [str(code.folder) if code else "", str(code.packages or "") if code else ""]
        command += [json.dumps(code.imports if code else []), *(str(t) for t in tolerance)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "KERAS_TRAINER_CPU_DEVICES": ""}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_SECONDS, check=False, env=env)
        except subprocess.TimeoutExpired as exc:
            raise Unservable(f"loading the saved model took more than {CHECK_SECONDS} s") from exc
        try:
            answer = json.loads((Path(out) / "answer.json").read_text())
        except (OSError, ValueError) as exc:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
            raise Unservable(f"the process loading the saved model ended without an answer: {last[0]}") from exc
    if "ok" not in answer:
        raise Unservable(str(answer.get("error")))
    return time.monotonic() - started
