"""The handler contract without a model: loading (one line saying why not) and what a batch's
preprocess and postprocess may do (the status rule, rows kept, model inputs checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keras_server.handler import HandlerError, HandlerLoadError, load
from keras_server.model import TensorSpec

CODE = Path(__file__).resolve().parent.parent / "helpers" / "handler_code"
IDS = [TensorSpec("ids", np.dtype("int32"), (None, 6))]


@pytest.fixture(autouse=True)
def code_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(CODE))


def probs_of(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model of ids: class 2 for rows holding a known word, else class 0."""
    known = (inputs["ids"] > 1).any(axis=1)
    probs = np.zeros((len(known), 3), "float32")
    probs[np.arange(len(known)), np.where(known, 2, 0)] = 1.0
    return {"probs": probs}


def test_a_batch_goes_through_preprocess_the_model_and_postprocess() -> None:
    handler = load("text_handler:Tokens")
    specs = handler.request_specs(IDS)
    assert [(s.name, s.raw) for s in specs] == [("text", True)]
    texts = np.array(["good movie", b"zzz", "boring plot indeed"], dtype=object)
    out = handler.run(IDS, probs_of, {"text": texts})
    assert out["label"].tolist() == ["positive", "negative", "positive"]
    assert out["label"].dtype == object  # text, as the codec writes it
    assert out["batch"].tolist() == [3, 3, 3]


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        (5, 400, "handler text_handler:Tokens.preprocess: TypeError: each text must be a string, got int"),
        ("explode now", 500, "handler text_handler:Tokens.preprocess: RuntimeError: the tokeniser broke"),
    ],
)
def test_preprocess_errors_are_400_for_values_it_refuses_and_500_for_the_rest(
    text: Any, status: int, message: str
) -> None:
    handler = load("text_handler:Tokens")
    with pytest.raises(HandlerError) as caught:
        handler.run(IDS, probs_of, {"text": np.array(["good", text], dtype=object)})
    assert (caught.value.status, caught.value.message, caught.value.stage) == (status, message, "preprocess")


def test_postprocess_errors_are_500_naming_the_handler() -> None:
    handler = load("text_handler:BrokenAfter")
    assert handler.request_specs(IDS) == IDS  # no preprocess: requests carry the model's own inputs
    with pytest.raises(HandlerError) as caught:
        handler.run(IDS, probs_of, {"ids": np.ones((2, 6), "int32")})
    assert caught.value.status == 500
    assert caught.value.message == "handler text_handler:BrokenAfter.postprocess: ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    ("pre", "post", "message"),
    [
        (lambda i: np.ones((1, 6), "int32"), None, "preprocess returned [1] rows for a batch of 2"),
        (None, lambda o: {"label": ["a"]}, "postprocess returned [1] rows for a batch of 2"),
        (lambda i: np.ones((2, 5), "int32"), None, "input 'ids' must have shape [-1, 6] (-1: any), got [2, 5]"),
        (lambda i: {"words": np.ones((2, 6))}, None, "preprocess returned inputs ['words']; the model takes ['ids']"),
        (lambda i: [["a"] * 6] * 2, None, "expected numbers, got text"),
        (None, lambda o: ["a", "b"], "postprocess must return a non-empty dict"),
        (None, lambda o: {"n": 3}, "postprocess returned 'n' as one value, not one per row"),
    ],
)
def test_what_does_not_fit_is_a_500_naming_the_handler(
    monkeypatch: pytest.MonkeyPatch, pre: Any, post: Any, message: str
) -> None:
    import text_handler

    methods = {name: staticmethod(f) for name, f in (("preprocess", pre), ("postprocess", post)) if f is not None}
    monkeypatch.setattr(text_handler, "Rows", type("Rows", (), methods), raising=False)
    handler = load("text_handler:Rows")
    with pytest.raises(HandlerError, match=r"^handler text_handler:Rows\.") as caught:
        handler.run(IDS, probs_of, {"ids": np.ones((2, 6), "int32"), "text": np.array(["a", "b"], dtype=object)})
    assert caught.value.status == 500
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module:Tokens", "handler no_such_module:Tokens: cannot import 'no_such_module': ModuleNotFoundError"),
        ("text_handler:Missing", "handler text_handler:Missing: module 'text_handler' has no class 'Missing'"),
        ("text_handler:token_ids", "module 'text_handler' has no class 'token_ids'"),
        ("text_handler:Unbuildable", "handler text_handler:Unbuildable: Unbuildable() failed: OSError: vocabulary"),
        ("text_handler:VOCABULARY", "has no class 'VOCABULARY'"),
        ("text handler", "--handler must be module:Class, got 'text handler'"),
    ],
)
def test_a_handler_that_cannot_be_loaded_says_why_in_one_line(ref: str, message: str) -> None:
    with pytest.raises(HandlerLoadError) as caught:
        load(ref)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
