"""The server's defaults have one source: the KerasModelService API types."""

from __future__ import annotations

from keras_operator.api.model_service import ServerSpec
from keras_server.cli import config_from, parser
from keras_server.config import ServerConfig


def test_the_servers_defaults_are_the_apis() -> None:
    api, config = ServerSpec(), ServerConfig()
    assert (config.port, config.max_request_bytes, config.max_queue, config.drain_seconds) == (
        api.port,
        api.max_request_bytes,
        api.max_queue,
        api.drain_seconds,
    )
    assert (config.max_batch_size, config.max_latency_ms) == (api.batching.max_batch_size, api.batching.max_latency_ms)


def test_a_flag_not_given_leaves_the_default_and_a_flag_given_wins() -> None:
    base = ["--model-uri", "m.keras", "--model-name", "m"]
    assert config_from(parser().parse_args(base)) == ServerConfig()
    given = config_from(parser().parse_args([*base, "--max-batch-size", "8", "--drain-seconds", "3"]))
    assert (given.max_batch_size, given.drain_seconds, given.max_queue) == (8, 3.0, ServerConfig().max_queue)
