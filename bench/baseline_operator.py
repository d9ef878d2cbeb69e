"""The operator benchmark's baseline: the least a kopf operator can do for a KerasTrainingJob —
create one Job for it — with kopf's defaults and the blocking kubernetes client in a thread (what the real
operator used until its calls moved onto the event loop; kept, so figures of before and after compare).

Run: kopf run --standalone --all-namespaces bench/baseline_operator.py (KERAS_OPERATOR_API_SERVER=URL)
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf
import kubernetes


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=os.environ["KERAS_OPERATOR_API_SERVER"], default_namespace="default")


def _batch() -> kubernetes.client.BatchV1Api:
    config = kubernetes.client.Configuration()
    config.host = os.environ["KERAS_OPERATOR_API_SERVER"]
    return kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(config))


BATCH = _batch()


@kopf.on.create("kerasoperator.dev", "v1alpha1", "kerastrainingjobs")
async def create(body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-train", "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "keras-trainer", "args": ["train"]}],
                }
            }
        },
    }
    kopf.adopt(job, owner=body)
    await asyncio.to_thread(BATCH.create_namespaced_job, namespace, job, _preload_content=False)
