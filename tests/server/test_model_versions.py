"""Model versions: the policy, finding versions in a base folder, loading and unloading them as the folder
changes, routing by number and label, the status listing, readiness and metrics, and the CLI flags."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from helpers.server import captured_serve
from keras_server import discovery
from keras_server.app import create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel
from keras_server.repository import Repository
from keras_server.versions import VersionPolicy, parse_labels, parse_policy, to_retire
from keras_server.watcher import Watcher
from keras_trainer import storage

ROW = [[0.5, 0.5, 0.5, 0.5]]

# --- the policy and labels (pure) ---


@pytest.mark.parametrize(
    ("text", "present", "selected"),
    [
        ("latest:1", [1, 2, 10], {10}),
        ("latest:2", [3, 1, 2], {2, 3}),
        ("latest:5", [1, 2], {1, 2}),
        ("all", [1, 2, 7], {1, 2, 7}),
        ("specific:1,7", [1, 2, 7], {1, 7}),
        ("specific:1,9", [1, 2], {1}),
        ("latest:1", [], set()),
    ],
)
def test_policies_select_versions_as_tf_serving_does(text: str, present: list[int], selected: set[int]) -> None:
    assert parse_policy(text).select(present) == selected
    assert str(parse_policy(text)) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("latest:0", "N >= 1"),
        ("latest:x", "non-negative whole number"),
        ("specific:", "non-negative whole number"),
        ("specific:1,-2", "non-negative whole number"),
        ("newest", "latest:N, all or specific:A,B"),
        ("all:3", "latest:N, all or specific:A,B"),
    ],
)
def test_bad_policies_say_what_is_expected(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match="--model-versions") as caught:
        parse_policy(text)
    assert needle in str(caught.value)


def test_labels_parse_and_refuse_mistakes() -> None:
    assert parse_labels(["stable=1", "canary = 2"]) == {"stable": 1, "canary": 2}
    for bad, needle in [
        (["stable"], "NAME=VERSION"),
        (["a/b=1"], "NAME=VERSION"),
        (["stable=one"], "non-negative whole number"),
        (["s=1", "s=2"], "given twice"),
    ]:
        with pytest.raises(ValueError, match="--version-label") as caught:
            parse_labels(bad)
        assert needle in str(caught.value)


def test_old_versions_leave_only_once_a_wanted_one_serves() -> None:
    assert to_retire(wanted={2}, available=[1, 2]) == [1]
    assert to_retire(wanted={2}, available=[1]) == []  # 2 is loading or failed: 1 stays
    assert to_retire(wanted={1, 2}, available=[1, 2]) == []
    assert to_retire(wanted=set(), available=[1]) == []  # the folder was emptied: keep serving


# --- finding versions ---


def test_discovery_finds_numbered_folders_holding_a_model(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    (base / "1" / "digits.keras").write_bytes(b"x" * 10)
    (base / "2" / "variables").mkdir(parents=True)
    (base / "2" / "saved_model.pb").write_bytes(b"pb")
    (base / "3").mkdir()  # being copied: no model yet, not a version
    (base / "4").mkdir()
    (base / "4" / "a.keras").write_bytes(b"a")
    (base / "4" / "b.keras").write_bytes(b"b")
    (base / "tmp").mkdir()
    (base / "5.keras").write_bytes(b"a file, not a version folder")

    found = discovery.discover(str(base))
    assert sorted(found) == [1, 2, 4]
    assert found[1].uri == f"{base}/1/digits.keras"
    assert found[1].fingerprint == (("digits.keras", 10),)
    assert found[2].uri == f"{base}/2"
    assert not found[1].problem
    assert "several .keras files (a.keras, b.keras)" in found[4].problem

    assert not discovery.is_single_model(str(base))
    assert discovery.is_single_model(str(base / "2"))
    assert discovery.is_single_model(str(base / "1" / "digits.keras"))
    assert discovery.is_single_model(f"file://{base}/1/digits.keras")


def test_discovery_reads_pvc_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path))
    (tmp_path / "models" / "digits" / "7").mkdir(parents=True)
    (tmp_path / "models" / "digits" / "7" / "model.keras").write_bytes(b"k")
    found = discovery.discover("pvc://models/digits")
    assert list(found) == [7]
    assert found[7].uri == "pvc://models/digits/7/model.keras"
    with pytest.raises(storage.StorageError, match="not found"):
        discovery.discover("pvc://models/nothing")


# --- serving versions in process ---


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Models answering 1.0, 2.0 and 3.0, saved once for the module (saving is the slow part)."""
    root = tmp_path_factory.mktemp("versions")
    return {n: models.constant(root / f"v{n}.keras", float(n)) for n in (1, 2, 3)}


@pytest.fixture(autouse=True)
def _no_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_SERVER_XLA", "0")  # compiling each version would only slow these tests


def put(base: Path, number: int, source: Path) -> None:
    """Publish a version as one rename, as a careful writer does."""
    staging = base / f".tmp-{number}"
    staging.mkdir(parents=True)
    shutil.copy(source, staging / "model.keras")
    staging.rename(base / str(number))


def load(uri: str, version: str, staging: Path | None) -> ServedModel:
    model = ServedModel.load(uri, "m", version, staging)
    model.warm_up(4)
    return model


class Server:
    def __init__(self, base: Path, policy: str, labels: dict[str, int] | None = None) -> None:
        self.repository = Repository("m", labels)
        self.watcher = Watcher(self.repository, str(base), parse_policy(policy), load)
        self.client = TestClient(TestServer(create_app(self.repository, ServerConfig(max_batch_size=4))))

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.client.get(path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.client.post(path, data=json.dumps(body)) as resp:
            return resp.status, await resp.json()

    async def value(self, path: str = "/v1/models/m:predict") -> float:
        status, body = await self.post(path, {"instances": ROW})
        assert status == 200, body
        return float(body["predictions"][0][0])

    async def states(self) -> dict[str, tuple[str, str, str]]:
        status, body = await self.get("/v1/models/m")
        assert status == 200, body
        return {
            s["version"]: (s["state"], s["status"]["error_code"], s["status"]["error_message"])
            for s in body["model_version_status"]
        }


@pytest_asyncio.fixture
async def server_for(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Server] = []

    async def make(policy: str = "latest:1", labels: dict[str, int] | None = None) -> Server:
        server = Server(tmp_path / "base", policy, labels)
        await server.client.start_server()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.client.close()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "base").mkdir()
    return tmp_path / "base"


@pytest.mark.slow
async def test_latest_follows_new_versions_and_unloads_the_old(
    base: Path, saved: dict[int, Path], server_for: Any
) -> None:
    put(base, 1, saved[1])
    server = await server_for("latest:1")
    assert (await server.get("/v2/health/ready"))[0] == 503
    await server.watcher.scan()
    assert (await server.get("/v2/health/ready"))[0] == 200
    assert await server.value() == 1.0
    assert await server.states() == {"1": ("AVAILABLE", "OK", "")}

    put(base, 2, saved[2])
    await server.watcher.scan()
    assert await server.value() == 2.0
    assert await server.value("/v1/models/m/versions/2:predict") == 2.0
    assert await server.states() == {"2": ("AVAILABLE", "OK", ""), "1": ("END", "OK", "")}
    status, body = await server.post("/v1/models/m/versions/1:predict", {"instances": ROW})
    assert status == 404
    assert body["error"] == "model 'm' version 1 is not loaded (unloaded); loaded versions: ['2']"
    assert server.repository.versions[1].model is None  # unloaded, not only unroutable
    _, listing = await server.get("/v1/models/m")
    assert [s["version"] for s in listing["model_version_status"]] == ["2", "1"]  # newest first


@pytest.mark.slow
async def test_policy_all_serves_every_version_and_unversioned_goes_to_the_highest(
    base: Path, saved: dict[int, Path], server_for: Any
) -> None:
    for n in (1, 2):
        put(base, n, saved[n])
    server = await server_for("all")
    await server.watcher.scan()
    assert await server.value() == 2.0
    assert await server.value("/v1/models/m/versions/1:predict") == 1.0
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW[0]}]}
    status, body = await server.post("/v2/models/m/versions/1/infer", v2)
    assert status == 200, body
    assert (body["model_version"], body["outputs"][0]["data"]) == ("1", [1.0])
    status, body = await server.post("/v2/models/m/infer", v2)
    assert (body["model_version"], body["outputs"][0]["data"]) == ("2", [2.0])

    status, meta = await server.get("/v2/models/m")
    assert (status, meta["versions"]) == (200, ["1", "2"])
    status, meta = await server.get("/v2/models/m/versions/1")
    assert status == 200
    assert meta["inputs"][0]["shape"] == [-1, 4]
    assert (await server.get("/v2/models/m/versions/1/ready")) == (200, {"name": "m", "ready": True})
    status, body = await server.get("/v2/models/m/versions/9/ready")
    assert status == 404
    assert "no version '9'" in body["error"]
    status, meta = await server.get("/v1/models/m/versions/1/metadata")
    assert (status, meta["model_spec"]["version"]) == (200, "1")
    status, meta = await server.get("/v1/models/m/metadata")
    assert meta["model_spec"]["version"] == "2"

    shutil.rmtree(base / "1")  # a version removed from the folder leaves the policy
    await server.watcher.scan()
    assert await server.states() == {"2": ("AVAILABLE", "OK", ""), "1": ("END", "OK", "")}


@pytest.mark.slow
async def test_specific_versions_and_labels(base: Path, saved: dict[int, Path], server_for: Any) -> None:
    for n in (1, 2, 3):
        put(base, n, saved[n])
    server = await server_for("specific:1,2", {"stable": 1, "canary": 2, "next": 3})
    await server.watcher.scan()
    assert set(await server.states()) == {"1", "2"}
    assert await server.value() == 2.0
    assert await server.value("/v1/models/m/labels/stable:predict") == 1.0
    assert await server.value("/v1/models/m/labels/canary:predict") == 2.0

    status, body = await server.post("/v1/models/m/labels/next:predict", {"instances": ROW})
    assert status == 404
    assert body["error"] == "model 'm' label 'next' names version 3, which is not loaded; loaded versions: ['1', '2']"
    status, body = await server.post("/v1/models/m/labels/nope:predict", {"instances": ROW})
    assert status == 404
    assert "has no label 'nope'" in body["error"]

    status, body = await server.get("/v1/models/m/labels/stable")
    assert (status, [s["version"] for s in body["model_version_status"]]) == (200, ["1"])
    status, body = await server.get("/v1/models/m/versions/2")
    assert (status, body["model_version_status"][0]["state"]) == (200, "AVAILABLE")
    status, meta = await server.get("/v1/models/m/labels/stable/metadata")
    assert (status, meta["model_spec"]["version"]) == (200, "1")


@pytest.mark.slow
async def test_a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving(
    base: Path, saved: dict[int, Path], server_for: Any
) -> None:
    put(base, 1, saved[1])
    server = await server_for("latest:1")
    await server.watcher.scan()
    (base / "2").mkdir()
    (base / "2" / "model.keras").write_bytes(b"not a zip")
    await server.watcher.scan()
    states = await server.states()
    assert states["1"] == ("AVAILABLE", "OK", "")
    state, code, message = states["2"]
    assert (state, code) == ("END", "UNKNOWN")
    assert "model.keras" in message
    assert (await server.get("/v2/health/ready"))[0] == 200
    assert await server.value() == 1.0
    status, body = await server.post("/v1/models/m/versions/2:predict", {"instances": ROW})
    assert status == 404
    assert "failed to load" in body["error"]

    await server.watcher.scan()  # unchanged files: not tried again
    assert server.repository.versions[2].state == "END"
    shutil.copy(saved[2], base / "2" / "model.keras")  # rewritten: tried again, then it replaces 1
    await server.watcher.scan()
    assert await server.value() == 2.0
    assert (await server.states())["1"] == ("END", "OK", "")


@pytest.mark.slow
async def test_metrics_carry_the_version(base: Path, saved: dict[int, Path], server_for: Any) -> None:
    put(base, 1, saved[1])
    server = await server_for("latest:1")
    await server.watcher.scan()
    await server.value()
    put(base, 2, saved[2])
    await server.watcher.scan()
    await server.value()
    async with server.client.get("/metrics") as resp:
        text = await resp.text()
    for version in ("1", "2"):
        assert (
            f'keras_server_requests_total{{code="200",endpoint="/v1/models/{{name}}:predict",version="{version}"}} 1.0'
            in text
        )
        bucket = f'endpoint="/v1/models/{{name}}:predict",le="+Inf",version="{version}"'
        assert f"keras_server_request_duration_seconds_bucket{{{bucket}}} 1.0" in text
    assert 'keras_server_model_version_state{state="END",version="1"} 1.0' in text
    assert 'keras_server_model_version_state{state="AVAILABLE",version="2"} 1.0' in text


@pytest.mark.slow
async def test_an_unknown_method_is_404_and_classify_is_routed(
    base: Path, saved: dict[int, Path], server_for: Any
) -> None:
    put(base, 1, saved[1])
    server = await server_for()
    await server.watcher.scan()
    status, body = await server.post("/v1/models/m:nope", {"instances": ROW})
    assert status == 404, body
    status, body = await server.post("/v1/models/m:regress", {"examples": [{"x": ROW[0]}]})
    assert (status, body) == (200, {"result": [1.0]})
    status, body = await server.post("/v1/models/m/versions/1:classify", {"examples": [{"x": ROW[0]}]})
    assert (status, body) == (200, {"result": [[["0", 1.0]]]})


@pytest.mark.slow
async def test_a_retiring_version_answers_the_requests_it_admitted(
    base: Path, saved: dict[int, Path], server_for: Any
) -> None:
    put(base, 1, saved[1])
    server = await server_for()
    await server.watcher.scan()
    old = server.repository.versions[1]
    gate = asyncio.Event()
    real = old.model.predict  # type: ignore[union-attr]

    def held(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(30)
        return real(inputs)

    loop = asyncio.get_running_loop()
    old.model.predict = held  # type: ignore[union-attr,method-assign]
    in_flight = asyncio.ensure_future(server.value())
    while old.batcher.open == 0:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    put(base, 2, saved[2])
    scan = asyncio.ensure_future(server.watcher.scan())
    while old.state != "UNLOADING":
        await asyncio.sleep(0.01)
    assert await server.value() == 2.0  # new requests go to 2 at once
    assert not scan.done()  # 1 waits for its request
    gate.set()
    assert await in_flight == 1.0
    await scan
    assert old.state == "END"


@pytest.mark.slow
async def test_the_server_process_flow_exits_when_nothing_can_load(tmp_path: Path) -> None:
    from keras_server.server import serve

    (tmp_path / "base" / "1").mkdir(parents=True)
    (tmp_path / "base" / "1" / "model.keras").write_bytes(b"broken")
    config = ServerConfig(version_poll_seconds=0)
    assert await serve(str(tmp_path / "base"), "m", "127.0.0.1", 0, config) == 1
    assert await serve(str(tmp_path / "missing"), "m", "127.0.0.1", 0, config) == 1


# --- the flags ---


@pytest.mark.slow
def test_version_flags_reach_the_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from keras_server import cli as server_cli

    seen = captured_serve(monkeypatch)
    base = ["--model-uri", "base", "--model-name", "m"]
    assert server_cli.main(base) == 0
    assert (seen[0].model_versions, dict(seen[0].version_labels), seen[0].version_poll_seconds) == (
        VersionPolicy("latest", 1),
        {},
        10.0,
    )
    flags = ["--model-versions", "specific:1,3", "--version-label", "stable=1", "--version-label", "canary=3"]
    assert server_cli.main([*base, *flags, "--version-poll-seconds", "0"]) == 0
    assert seen[1].model_versions == VersionPolicy("specific", versions=frozenset({1, 3}))
    assert dict(seen[1].version_labels) == {"stable": 1, "canary": 3}
    assert seen[1].version_poll_seconds == 0

    assert server_cli.main([*base, "--model-versions", "newest"]) == 2
    assert "latest:N, all or specific:A,B" in capsys.readouterr().err
    assert server_cli.main([*base, "--version-label", "stable"]) == 2
    assert "NAME=VERSION" in capsys.readouterr().err
