"""What a handler adds to the server's own work, in process, without HTTP or the model: the CPU a
handler costs is steady where requests/s on a shared machine is not.

Usage: python bench/handler_cost.py [--rows 8] [--number 20000]

Prints microseconds (best of 5) for: one batch through the identity handler (preprocess, the model
inputs checked and cast, postprocess, rows checked) against the same batch cast for a model call
without it; and one request's body decoded as the handler takes it (values as given) against as the
model takes it (checked and cast per request).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "handler_code"))

from keras_server import codec  # noqa: E402 - after the handlers' folder is on the path
from keras_server.handler import load  # noqa: E402
from keras_server.model import TensorSpec  # noqa: E402


def best_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="rows of the batch (one example per request)")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args(argv)
    handler = load("identity:Identity")
    specs = [TensorSpec("input", np.dtype("float32"), (None, 64))]
    batch = {"input": np.random.default_rng(0).random((args.rows, 64))}  # float64, as JSON numbers decode

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": inputs["input"][:, :10]}

    body = orjson.dumps({"instances": batch["input"][:1].tolist()})
    raw = handler.request_specs(specs)
    figures = {
        "batch, identity handler": best_us(lambda: handler.run(specs, model, batch), args.number),
        "batch, no handler": best_us(lambda: model({"input": batch["input"].astype("float32")}), args.number),
        "request decoded for the handler": best_us(lambda: codec.parse_tfs(orjson.loads(body), raw), args.number),
        "request decoded for the model": best_us(lambda: codec.parse_tfs(orjson.loads(body), specs), args.number),
    }
    for name, us in figures.items():
        print(f"{name}: {us:.1f} µs")
    extra = figures["batch, identity handler"] - figures["batch, no handler"]
    saved = figures["request decoded for the model"] - figures["request decoded for the handler"]
    print(f"the handler adds {extra:.1f} µs per batch of {args.rows} and saves {saved:.1f} µs per request's decoding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
