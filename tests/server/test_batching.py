"""The batcher: its adaptive wait (for requests on their way, never for nobody), chunks, budgets and leavers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from keras_server.batching import Batcher, Overloaded


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


async def test_a_request_larger_than_max_batch_size_runs_in_chunks_in_order(
    doubler: tuple[Batcher, list[int]],
) -> None:
    batcher, calls = doubler
    x = np.arange(200, dtype="float32").reshape(100, 2)
    out = await asyncio.wait_for(batcher.arrive().submit({"x": x}), 5)
    assert calls == [32, 32, 32, 4]
    np.testing.assert_array_equal(out["y"], x * 2)


async def test_bytes_held_are_bounded_but_a_lone_request_is_always_admitted() -> None:
    batcher = Batcher(lambda inputs: inputs, max_bytes=1000)
    first, second = batcher.arrive(), batcher.arrive()
    first.admit(600)
    with pytest.raises(Overloaded, match="600 bytes of requests held, 1000 at most; this one has 600"):
        second.admit(600)
    first.leave()
    assert batcher.held_bytes == 0
    second.admit(5000)  # alone: admitted, whatever its size
    second.leave()
    second.leave()  # leaving twice gives nothing back twice
    assert batcher.held_bytes == 0
    assert batcher.arriving == 0


async def test_a_caller_that_gives_up_leaves_the_queue_and_the_model_never_sees_it() -> None:
    seen: list[float] = []
    entered, release = threading.Event(), threading.Event()

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.extend(inputs["x"][:, 0].tolist())
        entered.set()
        release.wait(30)
        return {"y": inputs["x"]}

    batcher = Batcher(predict, max_batch_size=8, max_latency=0.0)
    batcher.start()
    try:
        held = asyncio.ensure_future(batcher.arrive().submit({"x": np.full((1, 1), 1.0)}))
        await asyncio.to_thread(entered.wait, 30)
        gone = asyncio.ensure_future(batcher.arrive().submit({"x": np.full((2, 1), 7.0)}))
        await asyncio.sleep(0)
        assert (batcher.depth, batcher.queued_rows) == (1, 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (batcher.depth, batcher.queued_rows, batcher.dropped) == (0, 0, 1)
        release.set()
        await asyncio.wait_for(held, 5)
        await asyncio.wait_for(batcher.arrive().submit({"x": np.full((1, 1), 2.0)}), 5)
    finally:
        release.set()
        await batcher.close()
    assert seen == [1.0, 2.0]
