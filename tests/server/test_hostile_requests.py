"""Hostile requests against the in-process model server: every one gets a 4xx with {"error": "..."}.

A seeded generator (the same cases on every run) builds malformed requests of both protocols: random
JSON structures, wrong types, huge, negative or overflowing shapes, poisoned tensor values (null,
numeric strings, non-bool BOOLs, out-of-range integers), the binary extension with wrong sizes, random
bytes and bad headers, and raw HTTP the parser refuses. Each is checked: the status is 4xx (never 5xx),
the body is JSON with an "error" string, and the server still answers a valid request afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from keras_server.app import REPOSITORY, Slot, create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel
from keras_server.protocol import MAX_FIELD_SIZE, MAX_LINE_SIZE, Runner

pytestmark = pytest.mark.slow  # every test serves a Keras model (TensorFlow)

SEED = 20240613
CASES = 2400  # body-level cases; the raw HTTP ones come on top
INFER = "/v2/models/multi/infer"
PREDICT = "/v1/models/multi:predict"
MAX_BYTES = 64 * 1024


class JsonErrorTestServer(TestServer):
    """The test server with the connections `serve` uses (parser errors answered as JSON)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return Runner(self.app, **kwargs)


@pytest_asyncio.fixture
async def multi(tmp_path: Path) -> AsyncIterator[TestClient]:
    path = models.multi(tmp_path / "multi.keras")
    slot = Slot("multi")
    slot.model = ServedModel.load(str(path), "multi")
    slot.model.warm_up()
    client = TestClient(JsonErrorTestServer(create_app(slot, ServerConfig(max_request_bytes=MAX_BYTES))))
    await client.start_server()
    yield client
    await client.close()


def valid_v2(rows: int = 2) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "features", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * (4 * rows)},
            {"name": "counts", "shape": [rows, 2], "datatype": "INT32", "data": [1] * (2 * rows)},
        ]
    }


def valid_tfs(rows: int = 2) -> dict[str, Any]:
    return {"instances": [{"features": [0.5] * 4, "counts": [1, 2]} for _ in range(rows)]}


# --- the generator ---

POISON = [None, "1", "1.5", "abc", "", [], {}, {"b64": "AAAA"}, [1, [2]], float("nan")]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randint(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, 1e-300, rng.uniform(-10, 10)])
    if kind in (4, 5):
        return rng.choice(["", "FP32", "BYTES", "inputs", "x" * rng.randrange(50), "\u0000\uffff", "1e5"])
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["inputs", "outputs", "name", "shape", "datatype", "data", "parameters", "id", "instances", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def not_a_string(rng: random.Random) -> Any:
    return rng.choice([None, 1, 1.5, True, [], ["FP32"], {"a": 1}])


def bad_shape(rng: random.Random) -> Any:
    return rng.choice(
        [
            [-1, 4],
            [2, -4],
            [True, 4],
            [2.0, 4],
            ["2", 4],
            [2**62, 2**62],  # a product numpy's int64 wraps
            [2**70],
            [0, 2**70],
            [2**40, 2**40, 0],
            [],
            [8],
            [1, 8],
            [2, 2, 2],
            "2,4",
            None,
            {"0": 2},
            [[2], 4],
        ]
    )


def v2_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """A JSON v2 request broken in one (random) way that makes it invalid whatever else it holds."""
    body = valid_v2(rng.choice([1, 2, 3]))
    tensor = body["inputs"][rng.randrange(2)]
    how = rng.randrange(16)
    if how == 0:
        tensor["name"] = not_a_string(rng)
    elif how == 1:
        tensor["datatype"] = not_a_string(rng)
    elif how == 2:
        tensor["datatype"] = rng.choice(["FP99", "fp32", "", "STRING", "BYTES", "INT128"])
    elif how == 3:
        tensor["shape"] = bad_shape(rng)
    elif how == 4:  # one poisoned value among good ones
        data = tensor["data"]
        data[rng.randrange(len(data))] = rng.choice(POISON)
    elif how == 5:  # out of range for INT32
        body["inputs"][1]["data"][0] = rng.choice([2**31, -(2**31) - 1, 2**63, 2**64, 1.5, 1e30])
    elif how == 6:
        tensor["datatype"] = "BOOL"
        tensor["data"] = [rng.choice([0, 1, "true", None, 2]) for _ in tensor["data"]]
    elif how == 7:
        tensor["data"] = rng.choice([None, "data", {"0": 1}, 5, [[0.5] * 4] * 2, [[1, 2], 3]])
    elif how == 8:
        del tensor[rng.choice(["name", "shape", "datatype", "data"])]
    elif how == 9:
        body["inputs"] = rng.choice([[], None, {}, "inputs", [None], [1, 2], body["inputs"][:1]])
    elif how == 10:
        body["outputs"] = rng.choice([{}, "probs", [None], [{"name": 1}], [{"name": "nope"}], [{}]])
    elif how == 11:
        body["id"] = not_a_string(rng) if rng.random() < 0.8 else 7
        if body["id"] is None:
            body["id"] = 0
    elif how == 12:
        tensor["parameters"] = rng.choice([[], "x", 1, {"binary_data_size": rng.choice([-1, "8", True, 10**12])}])
    elif how == 13:
        body = random_json(rng)
        if isinstance(body, dict) and isinstance(body.get("inputs"), list):
            body["inputs"].append(None)  # never a valid request
    elif how == 14:  # float overflow into FP32, or FP16 range
        tensor = body["inputs"][0]
        tensor["data"][0] = rng.choice([1e300, -1e300, 1e39])
    else:
        tensor["name"] = rng.choice(["nope", "", "features\u0000"])
        body["inputs"][1 - body["inputs"].index(tensor)]["name"] = tensor["name"]  # both unknown
    return json.dumps(body, allow_nan=True).encode(), {}


def binary_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """The binary extension with sizes that do not add up, or a header length that is wrong."""
    rows = rng.choice([1, 2])
    features = np.full((rows, 4), 0.5, "<f4").tobytes()
    counts = np.ones((rows, 2), "<i4").tobytes()
    sizes = [len(features), len(counts)]
    how = rng.randrange(6)
    section = features + counts
    if how == 0:
        sizes[rng.randrange(2)] += rng.choice([-3, -1, 1, 4, 10**9])
    elif how == 1:
        section += b"\x00" * rng.randrange(1, 9)  # bytes that belong to no input
    elif how == 2:
        section = section[: rng.randrange(len(section))]
    elif how == 3:
        sizes[0] = rng.choice([-1, "16", True, None, 1.5])
    header = {
        "inputs": [
            {"name": "features", "shape": [rows, 4], "datatype": "FP32", "parameters": {"binary_data_size": sizes[0]}},
            {"name": "counts", "shape": [rows, 2], "datatype": "INT32", "parameters": {"binary_data_size": sizes[1]}},
        ]
    }
    if how == 5:
        header["inputs"][1]["datatype"] = "BYTES"  # 4-byte lengths that do not match
    text = json.dumps(header).encode()
    length: Any = len(text)
    if how == 4:
        length = rng.choice([0, -5, len(text) + len(section) + 1, "abc", "", "1e3", len(text) - 1, 2**80])
    return text + section, {"Inference-Header-Content-Length": str(length)}


def tfs_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    body: Any = valid_tfs(rng.choice([1, 2, 3]))
    how = rng.randrange(9)
    row = body["instances"][0]
    if how == 0:
        row["features"][rng.randrange(4)] = rng.choice(POISON[:7])
    elif how == 1:
        # Not true/false among numbers: numpy reads [true, 2] as [1, 2] (documented).
        row["counts"][rng.randrange(2)] = rng.choice([2**31, -(2**40), 1.5, None, "1"])
    elif how == 2:
        del row[rng.choice(["features", "counts"])]
    elif how == 3:
        row["features"] = rng.choice([[0.5] * 3, [[0.5] * 4], 0.5, None, "abc"])
    elif how == 4:
        body = {"inputs": {"features": [[0.5] * 4], "counts": rng.choice([[[1, 2]] * 2, None, "x", [[1]]])}}
    elif how == 5:
        body["signature_name"] = rng.choice(["other", 1, None, []])
        if body["signature_name"] is None:
            body["signature_name"] = 0
    elif how == 6:
        body = {"instances": rng.choice([[], None, {}, 1, [[0.5] * 4]]), **rng.choice([{}, {"inputs": []}])}
    elif how == 7:
        body = random_json(rng)
        if isinstance(body, dict):
            body["instances"] = body.get("instances") or [None]
    else:
        row["features"][0] = 1e300  # inf in float32
    return json.dumps(body, allow_nan=True).encode(), {}


def bytes_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """Random bytes, truncated JSON, bad encodings and headers."""
    how = rng.randrange(6)
    good = json.dumps(valid_v2()).encode()
    if how == 0:
        return rng.randbytes(rng.randrange(1, 300)), {}
    if how == 1:
        return good[: rng.randrange(len(good))], {}
    if how == 2:
        encoding = rng.choice(["br", "zstd", "compress", "x-foo", "gzip, gzip", "gzip;q=1", "\u00e9"])
        return good, {"Content-Encoding": encoding.encode("utf-8").decode("latin-1")}
    if how == 3:  # says gzip, is not (or is broken gzip)
        data = rng.choice([good, gzip.compress(good)[:20], rng.randbytes(40)])
        return data, {"Content-Encoding": rng.choice(["gzip", "deflate"])}
    if how == 4:  # a gzip bomb: small on the wire, past max_request_bytes once decoded
        return gzip.compress(b" " * (MAX_BYTES * 4)), {"Content-Encoding": "gzip"}
    return b"\xff\xfe" + good, {}


def examples_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    body = rng.choice(
        [
            {"examples": [{"features": [None, 1, 2, 3], "counts": [1, 2]}]},
            {"examples": [{"features": ["a", "b", "c", "d"], "counts": [1, 2]}]},
            {"examples": None},
            {"examples": []},
            {"examples": [1, 2]},
            {"context": [], "examples": [{}]},
            random_json(rng),
        ]
    )
    return json.dumps(body).encode(), {}


GENERATORS: list[tuple[str, Callable[[random.Random], tuple[bytes, dict[str, str]]]]] = [
    (INFER, v2_case),
    (INFER, v2_case),
    (INFER, binary_case),
    (PREDICT, tfs_case),
    (PREDICT, tfs_case),
    (INFER, bytes_case),
    (PREDICT, bytes_case),
    ("/v1/models/multi:classify", examples_case),
    ("/v1/models/multi:regress", examples_case),
]


def raw_cases() -> list[bytes]:
    """Requests aiohttp's parser refuses before any route: each must still be a JSON 4xx."""
    rng = random.Random(SEED + 1)
    base = "Host: x\r\nConnection: close\r\n"
    cases = [
        f"G@T / HTTP/1.1\r\n{base}\r\n".encode(),
        f"FOO /v2 HTTP/1.1\r\n{base}\r\n".encode(),
        f"GET /v2?{'a' * (MAX_LINE_SIZE + 10)} HTTP/1.1\r\n{base}\r\n".encode(),
        f"GET /v2 HTTP/1.1\r\n{base}X-Big: {'b' * (MAX_FIELD_SIZE + 10)}\r\n\r\n".encode(),
        ("GET /v2 HTTP/1.1\r\n" + base + "".join(f"X-{i}: y\r\n" for i in range(300)) + "\r\n").encode(),
        f"GET / HTTP/9.9\r\n{base}\r\n".encode(),
        b"GET /v2 HTTP/1.1\r\nConnection: close\r\n\r\n",
        f"POST {INFER} HTTP/1.1\r\n{base}Content-Length: abc\r\n\r\n".encode(),
        f"POST {INFER} HTTP/1.1\r\n{base}Content-Length: 5\r\nContent-Length: 6\r\n\r\n".encode(),
        f"POST {INFER} HTTP/1.1\r\n{base}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        f"POST {INFER} HTTP/1.1\r\n{base}Content-Length: 99999999999\r\n\r\n".encode(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        f"GET /v2 HTTP/1.1\r\n{base}Bad Header\r\n\r\n".encode(),
        f"GET /v2\x00 HTTP/1.1\r\n{base}\r\n".encode(),
        f"DELETE /v2 HTTP/1.1\r\n{base}\r\n".encode(),
        f"PUT {INFER} HTTP/1.1\r\n{base}Content-Length: 0\r\n\r\n".encode(),
        f"GET /nope HTTP/1.1\r\n{base}\r\n".encode(),
    ]
    for _ in range(150):
        line = rng.randbytes(rng.randrange(1, 60)).replace(b"\r\n", b"")
        cases.append(rng.choice([line + b"\r\n\r\n", b"GET " + line + b" HTTP/1.1\r\nHost: x\r\n\r\n"]))
    return cases


async def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:"))
        return status, await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


def check_error(status: int, body: bytes, what: str) -> None:
    assert 400 <= status < 500, f"{what}: status {status}: {body[:300]!r}"
    parsed = json.loads(body)
    assert isinstance(parsed, dict), f"{what}: {body[:300]!r}"
    assert isinstance(parsed.get("error"), str), f"{what}: {body[:300]!r}"
    assert "internal error" not in parsed["error"], what


async def assert_still_serving(client: TestClient) -> None:
    async with client.post(INFER, json=valid_v2()) as resp:
        assert resp.status == 200, await resp.text()
    async with client.post(PREDICT, json=valid_tfs()) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.timeout(300)
async def test_fuzzed_requests_get_json_4xx(multi: TestClient) -> None:
    client = multi
    await assert_still_serving(client)
    rng = random.Random(SEED)
    failures: list[str] = []
    for index in range(CASES):
        path, generate = GENERATORS[index % len(GENERATORS)]
        data, headers = generate(rng)
        what = f"case {index} {path} {headers} {data[:200]!r}"
        try:
            async with client.post(path, data=data, headers={"Content-Type": "application/json", **headers}) as resp:
                check_error(resp.status, await resp.read(), what)
        except (AssertionError, ValueError, aiohttp.ClientError) as exc:
            failures.append(f"{what}: {exc!r}")
    port = client.server.port
    assert port is not None
    raw = raw_cases()
    for index, data in enumerate(raw):
        try:
            status, body = await raw_request(port, data)
            check_error(status, body, f"raw case {index} {data[:120]!r}")
        except (AssertionError, ValueError, StopIteration, asyncio.IncompleteReadError) as exc:
            failures.append(f"raw case {index} {data[:120]!r}: {exc!r}")
    assert not failures, f"{len(failures)} of {CASES + len(raw)} cases failed:\n" + "\n".join(failures[:30])
    await assert_still_serving(client)


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (f"GET /v2?{'a' * (MAX_LINE_SIZE + 1)} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request line"),
        (f"GET /v2 HTTP/1.1\r\nHost: x\r\nX-A: {'b' * (MAX_FIELD_SIZE + 10)}\r\n\r\n", 431, "header"),
        ("GET /v2 HTTP/1.1\r\nHost: x\r\n" + "X-A: b\r\n" * 200 + "\r\n", 431, "too many"),
        ("FOO /v2 HTTP/1.1\r\nHost: x\r\n\r\n", 405, "unknown HTTP method"),
        ("POST /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed"),
    ],
)
async def test_parser_errors_have_their_status_and_a_json_body(
    multi: TestClient, data: str, status: int, needle: str
) -> None:
    port = multi.server.port
    assert port is not None
    got, body = await raw_request(port, data.encode())
    assert got == status, body
    assert needle in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        ({"data": [None, 0.5, 0.5, 0.5]}, "null"),
        ({"data": ["1", 0.5, 0.5, 0.5]}, "text"),
        ({"datatype": "BOOL", "data": [1, 0, 1, 0]}, "expected true or false"),
        ({"datatype": "BOOL", "data": ["yes", "no", "", "x"]}, "expected true or false"),
        ({"datatype": ["FP32"]}, "datatype must be a string"),
        ({"name": ["features"]}, "name must be a string"),
        ({"shape": [2**62, 2**62]}, f"holds {2**124} values"),
        ({"shape": [True, 4]}, "non-negative integers"),
        ({"shape": [-1, 4]}, "non-negative integers"),
        ({"data": [1e300, 0.5, 0.5, 0.5]}, "out of range"),
    ],
)
async def test_invalid_tensor_contents_are_refused(multi: TestClient, tensor: dict[str, Any], needle: str) -> None:
    body = valid_v2(1)
    body["inputs"][0].update(tensor)
    async with multi.post(INFER, json=body) as resp:
        got = await resp.json()
        assert resp.status == 400, got
    assert needle in got["error"]


async def test_out_of_range_integers_and_bool_values(multi: TestClient) -> None:
    body = valid_v2(1)
    body["inputs"][1]["data"] = [2**31, 1]
    async with multi.post(INFER, json=body) as resp:
        assert resp.status == 400
        assert "out of range" in (await resp.json())["error"]
    body = {"instances": [{"features": [0.5] * 4, "counts": [2**40, 1]}]}
    async with multi.post(PREDICT, json=body) as resp:
        assert resp.status == 400
    # JSON true/false are a BOOL tensor's values; such a tensor may feed a numeric input.
    body = valid_v2(1)
    body["inputs"][0].update(datatype="BOOL", data=[True, False, True, False])
    async with multi.post(INFER, json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_gzip_bodies_are_decoded_and_bounded(multi: TestClient) -> None:
    data = gzip.compress(json.dumps(valid_v2()).encode())
    async with multi.post(INFER, data=data, headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 200, await resp.text()
    bomb = gzip.compress(b" " * (MAX_BYTES * 64))
    async with multi.post(INFER, data=bomb, headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 413, await resp.text()
    async with multi.post(INFER, data=b"{}", headers={"Content-Encoding": "br"}) as resp:
        assert resp.status == 415
        assert "Content-Encoding" in (await resp.json())["error"]


async def test_a_500_names_a_request_id_not_the_exception(
    multi: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keras_server import codec

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(codec, "parse_v2", broken)
    async with multi.post(INFER, json=valid_v2()) as resp:
        assert resp.status == 500
        message = (await resp.json())["error"]
    assert "secret" not in message
    assert "RuntimeError" not in message
    rid = message.split("request id ")[1].rstrip(")")
    assert rid in capsys.readouterr().out


async def test_every_503_carries_retry_after(multi: TestClient) -> None:
    assert multi.app is not None
    multi.app[REPOSITORY].stop_ready()
    async with multi.get("/v2/health/ready") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
    async with multi.get("/v2/models/multi/ready") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
    # Unready for probes, but a request that still comes is answered.
    async with multi.post(INFER, json=valid_v2()) as resp:
        assert resp.status == 200
