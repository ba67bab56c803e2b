"""The circuit breaker's state machine (fake clock) and its wrapper around an Inference."""

from __future__ import annotations

import pytest

from gateway.breaker import BreakerInference, CircuitBreaker, State
from gateway.errors import GatewayError
from gateway.triton import Prediction


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_half_opens_after_cool_down_and_closes_on_success():
    clock, changes = Clock(), []
    breaker = CircuitBreaker(3, 10.0, clock=clock, on_change=changes.append)
    for _ in range(2):
        breaker.acquire()
        breaker.failure()
    breaker.acquire()
    breaker.success()  # a success resets the count: failures must be in a row
    for _ in range(3):
        breaker.acquire()
        breaker.failure()
    assert breaker.state is State.OPEN
    clock.now = 4.2
    with pytest.raises(GatewayError) as exc:
        breaker.acquire()
    assert exc.value.code == "backend_unavailable"
    assert exc.value.headers == {"Retry-After": "6"}  # what is left of the cool-down, rounded up
    clock.now = 10.0
    assert breaker.state is State.HALF_OPEN
    breaker.acquire()  # the probe
    with pytest.raises(GatewayError):
        breaker.acquire()  # everyone else waits for the probe's verdict
    breaker.success()
    assert breaker.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_a_failed_probe_opens_again_for_a_full_cool_down():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.acquire()
    breaker.failure()
    clock.now = 5.0
    breaker.acquire()
    breaker.failure()
    assert breaker.state is State.OPEN
    clock.now = 9.9
    assert breaker.state is State.OPEN
    clock.now = 10.0
    assert breaker.state is State.HALF_OPEN


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)


class Inner:
    def __init__(self) -> None:
        self.calls = 0
        self.error: GatewayError | None = None

    async def infer(self, texts: list[str]) -> list[Prediction]:
        self.calls += 1
        if self.error:
            raise self.error
        return [Prediction([0.5] * 28, [], "v1") for _ in texts]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


async def test_wrapper_counts_only_server_faults_and_stops_calling_when_open():
    inner, rejected = Inner(), []
    wrapped = BreakerInference(inner, CircuitBreaker(2, 60.0), on_reject=lambda: rejected.append(1))
    inner.error = GatewayError("invalid_request", "TEXT row 0 is not valid UTF-8")
    for _ in range(5):  # the client's bad input says nothing about Triton's health
        with pytest.raises(GatewayError):
            await wrapped.infer(["x"])
    assert wrapped.breaker.state is State.CLOSED
    inner.error = GatewayError("backend_timeout", "slow")
    for _ in range(2):
        with pytest.raises(GatewayError):
            await wrapped.infer(["x"])
    assert wrapped.breaker.state is State.OPEN
    calls = inner.calls
    with pytest.raises(GatewayError, match="circuit open"):
        await wrapped.infer(["x"])
    assert inner.calls == calls and rejected == [1]


async def test_wrapper_frees_the_probe_when_the_probe_was_bad_input():
    clock, inner = Clock(), Inner()
    wrapped = BreakerInference(inner, CircuitBreaker(1, 1.0, clock=clock), on_reject=lambda: None)
    inner.error = GatewayError("backend_unavailable", "down")
    with pytest.raises(GatewayError):
        await wrapped.infer(["x"])
    clock.now = 1.0
    inner.error = GatewayError("invalid_request", "bad")
    with pytest.raises(GatewayError, match="bad"):
        await wrapped.infer(["x"])
    assert wrapped.breaker.state is State.HALF_OPEN
    inner.error = None
    assert len(await wrapped.infer(["x", "y"])) == 2  # the next request may probe
    assert wrapped.breaker.state is State.CLOSED


async def test_ready_is_false_while_open_and_a_ready_triton_closes_it_after_the_cool_down():
    clock, inner = Clock(), Inner()
    wrapped = BreakerInference(inner, CircuitBreaker(1, 5.0, clock=clock), on_reject=lambda: None)
    inner.error = GatewayError("backend_unavailable", "down")
    with pytest.raises(GatewayError):
        await wrapped.infer(["x"])
    assert await wrapped.ready() is False  # Triton may answer health checks, but the circuit is open
    clock.now = 5.0
    assert await wrapped.ready() is True
    assert wrapped.breaker.state is State.CLOSED
