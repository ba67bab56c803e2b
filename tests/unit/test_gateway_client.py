"""The gateway client's retries against a scripted transport: one Idempotency-Key per call and the same on
each retry, Retry-After honoured, transport errors retried, the caller's 4xx raised at once, the tries and
the deadline bounded, and batches of at most 32 texts each with its own key."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import httpx
import pytest

from clients.gateway_client import GatewayClient, GatewayError, Retry
from tests.support.gateway import FakeClock

OK = {"results": [], "model": {"name": "goemotions", "version": "v"}}


def error(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"x-request-id": "r-1", **({"retry-after": retry_after} if retry_after else {})}
    return httpx.Response(status, json={"error": {"code": code, "message": "m"}}, headers=headers)


class Script:
    """A transport answering each request with the next of ``answers`` (a response, or an exception to
    raise); records the requests."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


def client(script: Script, retry: Retry | None = None) -> tuple[GatewayClient, list[float], FakeClock]:
    slept: list[float] = []
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    made = GatewayClient(
        "http://gateway",
        api_key="k" * 32,
        retry=retry,
        transport=httpx.MockTransport(script),
        sleep=sleep,
        clock=clock,
        rng=random.Random(0),
    )
    return made, slept, clock


def test_a_503_is_retried_after_its_retry_after_with_the_same_key():
    script = Script(
        error(503, "backend_unavailable", "2"),
        error(409, "request_in_progress", "1"),
        httpx.Response(200, json=OK),
        httpx.Response(200, json=OK),
    )
    gateway, slept, _ = client(script)
    assert gateway.analyse("I give up", learner_id="ada") == OK
    assert slept == [2.0, 1.0]
    keys = script.keys()
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert json.loads(script.requests[0].content) == {"text": "I give up", "learner_id": "ada"}
    assert script.requests[0].headers["x-api-key"] == "k" * 32
    gateway.analyse("again")
    assert script.keys()[3] != keys[0]  # a new call, a new key


def test_a_dropped_connection_is_retried_with_a_jittered_back_off():
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json=OK))
    gateway, slept, _ = client(script, Retry(base_s=0.5))
    assert gateway.analyse(["a", "b"]) == OK
    assert len(slept) == 2 and 0 <= slept[0] <= 0.5 and 0 <= slept[1] <= 1.0
    assert len(set(script.keys())) == 1


@pytest.mark.parametrize(
    ("status", "code"), [(422, "invalid_request"), (401, "unauthorized"), (422, "idempotency_key_reused")]
)
def test_the_callers_own_errors_are_raised_at_once(status, code):
    script = Script(error(status, code))
    gateway, slept, _ = client(script)
    with pytest.raises(GatewayError) as raised:
        gateway.analyse("x")
    assert (raised.value.status, raised.value.code, raised.value.request_id) == (status, code, "r-1")
    assert "request id r-1" in str(raised.value)
    assert slept == [] and len(script.requests) == 1


def test_the_tries_and_the_deadline_are_bounded():
    script = Script(*[error(503, "backend_unavailable", "1")] * 3)
    gateway, slept, _ = client(script, Retry(attempts=3))
    with pytest.raises(GatewayError, match="503 backend_unavailable"):
        gateway.analyse("x")
    assert len(script.requests) == 3 and slept == [1.0, 1.0]

    script = Script(*[error(429, "overloaded", "4")] * 5)
    gateway, slept, _ = client(script, Retry(deadline_s=10))
    with pytest.raises(GatewayError, match="429 overloaded"):
        gateway.analyse("x")
    assert slept == [4.0, 4.0]  # a third wait would end past the deadline

    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"))
    gateway, _, _ = client(script, Retry(attempts=2))
    with pytest.raises(GatewayError) as raised:
        gateway.analyse("x")
    assert (raised.value.status, raised.value.code) == (0, "unreachable")


def test_a_long_retry_after_is_capped():
    script = Script(error(503, "backend_unavailable", "3600"), httpx.Response(200, json=OK))
    gateway, slept, _ = client(script, Retry(max_wait_s=5, deadline_s=60))
    gateway.analyse("x")
    assert slept == [5.0]


def test_batches_of_at_most_32_texts_each_with_its_own_key():
    script = Script(*[lambda r: httpx.Response(200, json={"n": len(json.loads(r.content)["texts"])})] * 3)
    gateway, _, _ = client(script)
    answers = list(gateway.analyse_in_batches([f"t{i}" for i in range(70)], learner_id="ada"))
    assert [a["n"] for a in answers] == [32, 32, 6]
    assert len(set(script.keys())) == 3
    assert json.loads(script.requests[2].content)["texts"] == [f"t{i}" for i in range(64, 70)]


def test_reads_and_erasure_carry_no_key():
    script = Script(httpx.Response(200, json={"points": []}), httpx.Response(200, json={"removed": {}}))
    gateway, _, _ = client(script)
    gateway.trajectory("ada")
    gateway.erase("ada")
    assert [(r.method, r.url.path) for r in script.requests] == [
        ("GET", "/v1/learners/ada/trajectory"),
        ("DELETE", "/v1/learners/ada"),
    ]
    assert script.keys() == [None, None]
