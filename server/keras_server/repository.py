"""The versions of the served model, their states and batchers, and which one a request goes to.

Each loaded version has its own Batcher (its own model thread): batches never mix versions, and a
version that leaves takes its queue with it without touching the others'. A version becomes
routable once loaded and warmed up; one that leaves stops being routable at once and is unloaded
after the requests it admitted are answered. Everything here runs on the event loop; routing a
request and announcing it to the version's batcher (`arrive()`) happen with no await between them,
so a version is never unloaded under a request that was routed to it.

States are TF Serving's: START (wanted, not yet loading), LOADING, AVAILABLE, UNLOADING, END (unloaded,
or failed to load: then with an error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from keras_server.batching import Batcher
from keras_server.codec import RequestError
from keras_server.model import ServedModel

log = structlog.get_logger("keras_server")
State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
STATES: tuple[State, ...] = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


class Version:
    def __init__(self, number: int) -> None:
        self.number, self.name = number, str(number)
        self.state: State = "START"
        self.error = ""  # why the last load failed
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.fingerprint: tuple[tuple[str, int], ...] = ()  # of the files its last load attempt read
        self.staging: Path | None = None  # a remote model's download, removed when it unloads

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batcher's call. Looked up per call, not bound at load: a test may wrap model.predict."""
        if self.model is None:
            raise RequestError(503, f"version {self.name} is not loaded")
        return self.model.predict(inputs)

    def loaded(self) -> ServedModel:
        """The model, for a request routed here; a 503 once the server is shutting down."""
        model = self.model
        if model is None or not model.ready:
            raise RequestError(503, "the model is still loading")
        return model


class Repository:
    def __init__(self, name: str, labels: dict[str, int] | None = None) -> None:
        self.name = name
        self.labels = dict(labels or {})
        self.versions: dict[int, Version] = {}
        self.latest: Version | None = None  # the highest available version: where unversioned requests go
        self._make_batcher: Callable[[Version], Batcher] | None = None
        self._started = False
        self.draining = False  # shutting down: probes say unready, requests still get answers

    # --- lifecycle (on the event loop) ---

    def bind(self, make_batcher: Callable[[Version], Batcher]) -> None:
        """How to make a version's batcher (the app's settings and metrics); versions already in get theirs."""
        self._make_batcher = make_batcher
        for version in self.available():
            version.batcher = version.batcher or make_batcher(version)

    def start(self) -> None:
        self._started = True
        for version in self.versions.values():
            if version.batcher is not None:
                version.batcher.start()

    def version(self, number: int) -> Version:
        """The version numbered so, known from now on (state START when new)."""
        if number not in self.versions:
            self.versions[number] = Version(number)
        return self.versions[number]

    def publish(self, version: Version, model: ServedModel) -> None:
        """A loaded, warmed-up model: routable from now on."""
        if self._make_batcher is not None and version.batcher is None:
            version.batcher = self._make_batcher(version)
            if self._started:
                version.batcher.start()
        version.model, version.state, version.error = model, "AVAILABLE", ""
        self._route_latest()
        log.info("version_available", model=self.name, version=version.number)

    def fail(self, version: Version, error: str) -> None:
        version.state, version.error = "END", error
        log.error("version_load_failed", model=self.name, version=version.number, error=error)

    async def retire(self, version: Version) -> None:
        """Unroutable now; unloaded once the requests already routed to it are answered."""
        version.state = "UNLOADING"
        self._route_latest()
        batcher = version.batcher
        log.info("version_unloading", model=self.name, version=version.number, in_flight=batcher.open if batcher else 0)
        if batcher is not None:
            while batcher.open:
                await asyncio.sleep(0.01)
            await batcher.close()
        version.batcher, version.model, version.state = None, None, "END"
        log.info("version_unloaded", model=self.name, version=version.number)

    async def close(self) -> None:
        for version in self.versions.values():
            if version.batcher is not None:
                await version.batcher.close()

    def stop_ready(self) -> None:
        """Readiness fails from now on (shutting down), so the Service stops sending requests. Requests
        that still come (on kept-alive connections, or sent before the endpoints changed) are answered:
        a 503 for them would be an error the drain exists to avoid."""
        self.draining = True

    def _route_latest(self) -> None:
        available = self.available()
        self.latest = available[-1] if available else None

    # --- reading ---

    def available(self) -> list[Version]:
        return [v for _, v in sorted(self.versions.items()) if v.state == "AVAILABLE"]

    @property
    def ready(self) -> bool:
        latest = self.latest
        return not self.draining and latest is not None and latest.model is not None and latest.model.ready

    @property
    def batchers(self) -> list[Batcher]:
        return [v.batcher for v in self.versions.values() if v.batcher is not None]

    def route(self, version: str | None, label: str | None) -> Version:
        """The available version a request names (by number or label), or the latest: the hot path."""
        if version is None and label is None:
            latest = self.latest
            if latest is None:
                raise RequestError(503, "the model is still loading")
            return latest
        found = self.find(version, label)
        if found.state != "AVAILABLE":
            what = f"label {label!r} (version {found.name})" if label is not None else f"version {found.name}"
            status = 503 if found.state in ("START", "LOADING") else 404
            loaded = [v.name for v in self.available()]
            raise RequestError(
                status, f"model {self.name!r} {what} is {self._describe(found)}; loaded versions: {loaded}"
            )
        return found

    def find(self, version: str | None, label: str | None) -> Version:
        """The version a request names, in any state; 404 for one this server has never had."""
        if label is not None:
            if label not in self.labels:
                raise RequestError(404, f"model {self.name!r} has no label {label!r}; it has {sorted(self.labels)}")
            number: int | None = self.labels[label]
        else:
            number = int(version) if version is not None and version.isdecimal() and version.isascii() else None
        found = self.versions.get(number) if number is not None else None
        if found is None:
            loaded = [v.name for v in self.available()]
            if label is not None:
                raise RequestError(
                    404,
                    f"model {self.name!r} label {label!r} names version {number}, which is not loaded; "
                    f"loaded versions: {loaded}",
                )
            raise RequestError(404, f"model {self.name!r} has no version {version!r}; loaded versions: {loaded}")
        return found

    @staticmethod
    def _describe(version: Version) -> str:
        if version.state == "END":
            return f"not loaded (it failed to load: {version.error})" if version.error else "not loaded (unloaded)"
        return {"START": "not loaded yet", "LOADING": "still loading", "UNLOADING": "being unloaded"}.get(
            version.state, version.state
        )


class Slot(Repository):
    """One model as one version, set by assigning `model`: a single model's repository, as tests build it."""

    def __init__(self, name: str, version: str = "1") -> None:
        super().__init__(name)
        self._number = int(version)

    @property
    def model(self) -> ServedModel | None:
        found = self.versions.get(self._number)
        return found.model if found is not None else None

    @model.setter
    def model(self, model: ServedModel) -> None:
        self.publish(self.version(self._number), model)
