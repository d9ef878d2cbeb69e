"""Keeps the served versions what the version policy wants of the model URI.

Each round lists the base folder and loads (then warms up) what is new in a thread, off the event
loop; a version becomes routable only once warm. Then the versions the policy no longer wants are
unloaded, once a wanted one is available. A version that fails to load is reported with its error
and tried again only when its files change (a version being copied in place may fail first).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from keras_server import discovery
from keras_server.discovery import Found
from keras_server.model import ModelLoadError, ServedModel
from keras_server.repository import Repository, Version
from keras_server.versions import VersionPolicy, to_retire
from keras_trainer import storage

log = structlog.get_logger("keras_server")
Loader = Callable[[str, str, Path | None], ServedModel]  # (model URI, version, staging) -> a warm model


def needs_load(version: Version, found: Found) -> bool:
    if version.state == "START":
        return True
    if version.state != "END":
        return False  # loading, loaded or leaving
    return not version.error or version.fingerprint != found.fingerprint


class Watcher:
    def __init__(self, repository: Repository, uri: str, policy: VersionPolicy, load: Loader) -> None:
        self.repository, self.uri, self.policy, self.load_model = repository, uri, policy, load
        self.single = False  # the URI is one model (version 1), not a base folder: nothing to watch
        self._missing: frozenset[int] = frozenset()

    async def start(self) -> None:
        """The first round. Storage errors propagate: a URI that names nothing is a mistake."""
        loop = asyncio.get_running_loop()
        self.single = await loop.run_in_executor(None, discovery.is_single_model, self.uri)
        if self.single:
            await self.load(self.repository.version(1), Found(1, self.uri, ()))
            return
        run = await loop.run_in_executor(None, discovery.output_run, self.uri)
        if run is not None:  # resolved once: a newer run is served from the next start (a rollout)
            self.single = True
            log.info("serving_run", model=self.repository.name, **(run.run or {}))
            await self.load(self.repository.version(1), run)
            return
        log.info("versions", model=self.repository.name, uri=self.uri, policy=str(self.policy))
        await self.scan()

    async def load(self, version: Version, found: Found) -> None:
        """Load and warm up in a thread; the version is routable once this returns without error."""
        version.state, version.fingerprint = "LOADING", found.fingerprint
        if found.problem:
            self.repository.fail(version, found.problem)
            return
        staging = Path(tempfile.mkdtemp(prefix="keras-version-")) if storage.is_remote(found.uri) else None
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, self.load_model, found.uri, version.name, staging)
        except (ModelLoadError, storage.StorageError) as exc:
            _remove(staging)
            self.repository.fail(version, str(exc))
            return
        except Exception as exc:  # a model that loads and then fails its warm-up call, a store that is down
            _remove(staging)
            self.repository.fail(version, f"{type(exc).__name__}: {exc}")
            return
        version.staging = staging
        model.run = found.run
        self.repository.publish(version, model)

    async def scan(self) -> None:
        """One round: list, load what the policy wants and is not loaded, unload what it no longer wants.
        Listing errors propagate (at start they stop the server; later the next round tries again)."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, discovery.discover, self.uri)
        wanted = self.policy.select(found)
        self._report_missing(found)
        if not found and not self.repository.versions:
            # Also what a URI naming a folder that is neither a model nor a base folder looks like.
            log.warning("no_versions_yet", model=self.repository.name, uri=self.uri, expected="BASE/1/model.keras")
        todo = [n for n in sorted(wanted, reverse=True) if needs_load(self.repository.version(n), found[n])]
        # Newest first: it is where unversioned requests go.
        for number in todo:
            await self.load(self.repository.versions[number], found[number])
        leaving = to_retire(wanted, [v.number for v in self.repository.available()])
        for number in leaving:
            version = self.repository.versions[number]
            await self.repository.retire(version)
            _remove(version.staging)
            version.staging = None
        if leaving:
            await loop.run_in_executor(None, collect_garbage)

    def _report_missing(self, found: dict[int, Found]) -> None:
        if self.policy.kind != "specific":
            return
        missing = frozenset(self.policy.versions - set(found))
        if missing and missing != self._missing:
            log.warning("versions_not_found", model=self.repository.name, versions=sorted(missing), uri=self.uri)
        self._missing = missing

    async def watch(self, seconds: float) -> None:
        """Rounds every `seconds`, until cancelled; a failed round is logged and the next one tries again."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.scan()
            except Exception as exc:  # a store that is down must not stop serving what is loaded
                log.warning("versions_scan_failed", model=self.repository.name, uri=self.uri, error=str(exc))


def collect_garbage() -> None:
    """Models hold reference cycles, and the server freezes what it has loaded (gc.freeze) so that
    collections need not scan it: an unloaded model is only freed by a full collection, unfrozen.
    One pause per unload, instead of a model's memory per unload."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _remove(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
