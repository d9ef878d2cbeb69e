"""`keras-operator` with the fixes bench/README.md suggests, patched in at start-up: what they would buy.

Usage: BENCH_OPERATOR_WRAPPER="python bench/what_if_operator.py" python bench/operator_load.py ...

An experiment, not a proposal of code: each patch below stands for a change described in
bench/README.md ("Operator issues found"); the operator's own files are not touched. It priced those
changes on commit f1961c3; commit 5fe2b91 made them in the operator itself (on that code and later
this wrapper only repeats what is already there). The patches:

- logs: kopf's per-event INFO line (`Handler '…' succeeded.`) off, and the operator's per-change
  `status` line at debug;
- settings: `kube.api_client()` reads the API server once instead of `Settings.from_env()` per call;
- trainer config: JSON instead of PyYAML's Python representer (JSON is YAML);
- indexes: no deep copy of each event's spec and status (each watch event is a freshly parsed body);
- status writes: no PATCH when the status to write equals the last one written for that resource
  (the operator is the status's only writer; the watch only lags behind it).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

import kopf


def patch() -> None:
    from keras_operator.builders import training as builders
    from keras_operator.handlers import training as handlers
    from keras_operator.runtime import kube
    from keras_operator.runtime.settings import Settings

    server = Settings.from_env().api_server
    kube.api_client = lambda: kube._api_client(server)

    def config_text(owner: dict[str, Any], spec: Any) -> str:
        return json.dumps(builders.trainer_config(owner, spec), separators=(",", ":"))

    builders.trainer_config_text = config_text

    def plain(value: Any) -> Any:
        return dict(value) if isinstance(value, Mapping) else value

    handlers._plain = plain

    class Quiet:
        """The handlers' logger with `status` (logged at every change) demoted to debug."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def info(self, event: str, **kw: Any) -> None:
            if event != "status":
                self.real.info(event, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    handlers.log = Quiet(handlers.log)

    write = handlers._write

    async def write_once(key: Any, resource: dict[str, Any], outcome: Any) -> None:
        last = handlers.STATE.written.get(key)
        if last is not None and last[1] == outcome.status:
            resource = {**resource, "status": last[1]}  # already written: only the watch lags
        await write(key, resource, outcome)

    handlers._write = write_once


def quiet_kopf(**_: Any) -> None:
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.argv = ["keras-operator"]
    patch()
    from keras_operator.runtime.main import main

    kopf.on.startup()(quiet_kopf)  # registered after the operator's own `configure`, which sets the levels
    main()
