"""Every call of the operator's API client carries a request timeout: a call on a half-open connection
fails as a temporary error (its reconcile is retried) instead of holding its key for as long as the
kernel keeps the socket."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from helpers.blackhole import Blackhole
from keras_operator.runtime import kube
from keras_operator.runtime.credentials import Credentials
from keras_operator.runtime.settings import Settings


@pytest.mark.timeout(120)
async def test_a_call_to_an_api_that_never_answers_fails_as_temporary_within_its_timeout(blackhole: Blackhole) -> None:
    api = kube.Api(Credentials(blackhole.url), timeout=0.5)
    calls = {
        "get": api.get("Job", "ns", "a"),  # a GET, which urllib3 would otherwise send again on a timeout
        "patch": api.patch("Job", "ns", "a", {"metadata": {"labels": {"x": "y"}}}),
        "custom": api.get_custom(("kerasoperator.dev", "v1alpha1", "kerastrainingjobs"), "ns", "a"),
    }
    try:
        for call in calls.values():
            # The bound is a safety net for a hung test, far above the timeout: the assertion is on the outcome.
            with pytest.raises(kopf.TemporaryError):
                await asyncio.wait_for(call, timeout=60)
    finally:
        await api.close()


def test_the_request_timeout_comes_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERAS_OPERATOR_API_TIMEOUT", raising=False)
    assert kube.Api(Credentials("http://api"), Settings.from_env().api_timeout).timeout == (10.0, 30.0)
    monkeypatch.setenv("KERAS_OPERATOR_API_TIMEOUT", "2")
    assert kube.Api(Credentials("http://api"), Settings.from_env().api_timeout).timeout == (2.0, 2.0)
