"""The batcher's adaptive wait: it waits for requests on their way, never for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest_asyncio

from keras_trainer.serving.batching import Batcher


@pytest_asyncio.fixture
async def doubler() -> AsyncIterator[tuple[Batcher, list[int]]]:
    """A batcher with a 30 s max_latency around a model that doubles; `calls` holds each call's rows."""
    calls: list[int] = []

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    batcher = Batcher(predict, max_batch_size=32, max_latency=30.0)
    batcher.start()
    yield batcher, calls
    await batcher.close()


async def test_a_lone_request_does_not_wait_for_the_batch_to_fill(doubler: tuple[Batcher, list[int]]) -> None:
    batcher, calls = doubler
    arrival = batcher.arrive()
    # With a 30 s max_latency, only the adaptive rule can answer within the 5 s allowed here.
    out = await asyncio.wait_for(arrival.submit({"x": np.ones((1, 2), "float32")}), 5)
    np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])
    assert calls == [1]
    assert batcher.arriving == 0


async def test_a_request_on_its_way_joins_the_batch(doubler: tuple[Batcher, list[int]]) -> None:
    batcher, calls = doubler
    late = batcher.arrive()  # announced, still parsing its body
    early = asyncio.ensure_future(batcher.arrive().submit({"x": np.ones((1, 2), "float32")}))
    await asyncio.sleep(0.05)
    assert not early.done()  # the worker waits for the announced request
    second = await asyncio.wait_for(late.submit({"x": np.full((2, 2), 3.0, "float32")}), 5)
    first = await asyncio.wait_for(early, 5)
    assert calls == [3]  # one model call for both
    np.testing.assert_array_equal(first["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(second["y"], [[6.0, 6.0], [6.0, 6.0]])


async def test_a_request_that_fails_before_submitting_stops_being_awaited(doubler: tuple[Batcher, list[int]]) -> None:
    batcher, calls = doubler
    broken = batcher.arrive()
    broken.leave()  # e.g. its body was not valid JSON
    broken.leave()  # leaving twice is harmless
    assert batcher.arriving == 0
    await asyncio.wait_for(batcher.arrive().submit({"x": np.ones((1, 2), "float32")}), 5)
    assert calls == [1]
