"""A real server process watching a base folder: new versions replace old ones under steady traffic from
several clients, and no request fails while they switch."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from helpers import models
from helpers.server import get_json, model_server, post_json

ROW = [0.5, 0.5, 0.5, 0.5]
ROWS = 64  # each request runs in 8 model calls (max batch size 8): requests are in flight at every moment
CLIENTS = 4


def put(base: Path, number: int, source: Path) -> None:
    """Publish a version as one rename, as a careful writer does."""
    staging = base / f".tmp-{number}"
    staging.mkdir()
    shutil.copy(source, staging / "model.keras")
    staging.rename(base / str(number))


def states(url: str) -> dict[str, str]:
    status, body = get_json(f"{url}/v1/models/m")
    assert status == 200, body
    return {s["version"]: s["state"] for s in body["model_version_status"]}


def wait_for(url: str, expected: dict[str, str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if states(url) == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"the versions never became {expected}: {states(url)}")


def test_versions_switch_under_traffic_without_a_failed_request(tmp_path: Path) -> None:
    sources = {n: models.constant(tmp_path / f"v{n}.keras", float(n)) for n in (1, 2, 3)}
    base = tmp_path / "base"
    base.mkdir()
    put(base, 1, sources[1])
    answers: list[tuple[int, float | None, str]] = []  # (status, value, error)
    stop = threading.Event()
    lock = threading.Lock()

    log = tmp_path / "server.log"
    flags = ("--version-poll-seconds", "0.2", "--max-batch-size", "8")
    with model_server(base, "m", *flags, log_file=log) as (url, proc):

        def client(index: int) -> None:
            v2 = {"inputs": [{"name": "input", "shape": [ROWS, 4], "datatype": "FP32", "data": ROW * ROWS}]}
            while not stop.is_set():
                try:
                    if index % 2:
                        status, body = post_json(f"{url}/v1/models/m:predict", {"instances": [ROW] * ROWS})
                        value = body["predictions"][0][0] if status == 200 else None
                    else:
                        status, body = post_json(f"{url}/v2/models/m/infer", v2)
                        value = body["outputs"][0]["data"][0] if status == 200 else None
                    answer = (status, value, body.get("error", ""))
                except OSError as exc:  # a dropped connection is a failed request too
                    answer = (0, None, repr(exc))
                with lock:
                    answers.append(answer)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            put(base, 2, sources[2])
            wait_for(url, {"2": "AVAILABLE", "1": "END"})
            during_first = len(answers)
            put(base, 3, sources[3])
            wait_for(url, {"3": "AVAILABLE", "2": "END", "1": "END"})
            with lock:
                before_last = len(answers)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert proc.poll() is None

    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    values = [v for _, v, _ in answers]
    assert set(values) == {1.0, 2.0, 3.0}  # every version answered, and nothing else did
    assert during_first > 20  # traffic really ran through the switches
    assert set(values[before_last:]) == {3.0}  # once 2 is gone, only 3 answers
    unloading = [json.loads(line) for line in log.read_text().splitlines() if '"version_unloading"' in line]
    assert [e["version"] for e in unloading] == [1, 2]
    assert any(e["in_flight"] for e in unloading)  # a switch had requests to finish on the old version
