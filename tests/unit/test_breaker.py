"""The one failure policy (gateway.resilience.Breaker, fake clock) and the backends behind it: the Triton
client, the Redis result cache, the learner store (the audit writer's use is in test_audit.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.cache import GuardedCache, MemoryCache
from gateway.backends.trajectory import GuardedTrajectoryStore, MemoryTrajectoryStore, StoreUnavailable
from gateway.backends.triton import GuardedInference, Prediction
from gateway.errors import GatewayError
from gateway.learning.policy import load_policy
from gateway.learning.trajectory import TrajectoryPoint
from gateway.resilience import Breaker, State
from server.probes import wait_for_async


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_half_opens_after_cool_down_and_closes_on_success():
    clock, changes = Clock(), []
    breaker = Breaker("the model server", 3, 10.0, clock=clock, on_change=changes.append)
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
    breaker = Breaker("the model server", 1, 5.0, clock=clock)
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
        Breaker("the model server", 0, 1.0)
    with pytest.raises(ValueError):
        Breaker("the model server", 1, 0.0)


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
    wrapped = GuardedInference(
        inner, Breaker("the model server", 2, 60.0), on_reject=lambda: rejected.append(1)
    )
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


async def tripped(reset_s: float) -> tuple[Clock, Inner, GuardedInference]:
    """A wrapped Triton whose circuit (one failure trips it) was just opened by an outage."""
    clock, inner = Clock(), Inner()
    wrapped = GuardedInference(
        inner, Breaker("the model server", 1, reset_s, clock=clock), on_reject=lambda: None
    )
    inner.error = GatewayError("backend_unavailable", "down")
    with pytest.raises(GatewayError):
        await wrapped.infer(["x"])
    return clock, inner, wrapped


async def test_wrapper_frees_the_probe_when_the_probe_was_bad_input():
    clock, inner, wrapped = await tripped(reset_s=1.0)
    clock.now = 1.0
    inner.error = GatewayError("invalid_request", "bad")
    with pytest.raises(GatewayError, match="bad"):
        await wrapped.infer(["x"])
    assert wrapped.breaker.state is State.HALF_OPEN
    inner.error = None
    assert len(await wrapped.infer(["x", "y"])) == 2  # the next request may probe
    assert wrapped.breaker.state is State.CLOSED


async def test_ready_is_false_while_open_and_a_ready_triton_closes_it_after_the_cool_down():
    clock, _, wrapped = await tripped(reset_s=5.0)
    assert await wrapped.ready() is False  # Triton may answer health checks, but the circuit is open
    clock.now = 5.0
    assert await wrapped.ready() is True
    assert wrapped.breaker.state is State.CLOSED


def test_a_growing_cool_down_doubles_with_each_failed_probe_up_to_the_cap_and_resets_on_success():
    clock = Clock()
    breaker = Breaker("the audit database", reset_s=1.0, max_reset_s=4.0, clock=clock)
    breaker.failure()
    cool_downs = []
    for _ in range(4):
        assert breaker.state is State.OPEN and not breaker.allow()
        cool_downs.append(breaker.wait_s())
        clock.now += breaker.wait_s()
        assert breaker.allow()  # the probe
        breaker.failure()
    assert cool_downs == [1.0, 2.0, 4.0, 4.0]
    clock.now += breaker.wait_s()
    assert breaker.allow()
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.wait_s() == 0.0
    breaker.failure()
    assert breaker.wait_s() == 1.0  # a new outage starts from the base cool-down


async def test_call_counts_only_what_the_caller_calls_a_fault():
    breaker = Breaker("the Redis cache", clock=Clock())

    async def fails(exc: Exception) -> None:
        raise exc

    with pytest.raises(KeyError):
        await breaker.call(lambda: fails(KeyError("a bug")), lambda e: isinstance(e, OSError))
    assert breaker.state is State.CLOSED
    with pytest.raises(OSError):
        await breaker.call(lambda: fails(OSError("refused")), lambda e: isinstance(e, OSError))
    assert breaker.state is State.OPEN
    with pytest.raises(GatewayError, match="the Redis cache is failing"):
        await breaker.call(lambda: fails(OSError("never called")), lambda e: True)


class FlakyCache(MemoryCache):
    """A cache that fails while `down` is set; counts the calls that reached it."""

    def __init__(self) -> None:
        super().__init__(100, 60)
        self.down = True
        self.calls = 0

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return await super().get_many(keys)

    async def set_many(self, items: dict[str, Prediction]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        await super().set_many(items)


async def test_a_failing_cache_is_a_miss_and_is_not_asked_again_until_the_cool_down_has_passed():
    clock, inner, errors = Clock(), FlakyCache(), []
    cache = GuardedCache(
        inner, Breaker("the Redis cache", reset_s=5.0, clock=clock), (OSError,), lambda: errors.append(1)
    )
    p = Prediction([0.5] * 28, [], "v1")
    assert await cache.get_many(["a", "b"]) == [None, None]  # a failure is a miss, never an error
    assert inner.calls == 1 and len(errors) == 1
    await cache.set_many({"a": p})
    assert await cache.get_many(["a"]) == [None]
    assert inner.calls == 1  # open: not asked (no request pays a connect timeout)
    inner.down = False
    clock.now += 5.0
    await cache.set_many({"a": p})  # the probe, which succeeds
    assert await cache.get_many(["a"]) == [p]
    assert inner.calls == 3 and len(errors) == 1


class FlakyStore(MemoryTrajectoryStore):
    def __init__(self) -> None:
        super().__init__(load_policy())
        self.down = True
        self.calls = 0

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        self.calls += 1
        if self.down:
            raise TimeoutError("redis timed out")
        return await super().history(learner_id)


async def test_a_failing_learner_store_is_unavailable_then_left_alone_for_the_cool_down():
    clock, inner, errors = Clock(), FlakyStore(), []
    store = GuardedTrajectoryStore(
        inner,
        Breaker("the learner store", reset_s=5.0, clock=clock),
        (OSError, TimeoutError),
        lambda: errors.append(1),
    )
    with pytest.raises(StoreUnavailable):
        await store.history("l-1")
    clock.now += 4.9
    with pytest.raises(StoreUnavailable):
        await store.history("l-1")
    assert inner.calls == 1 and len(errors) == 1
    inner.down = False
    clock.now += 0.1
    assert await store.history("l-1") == []
    assert inner.calls == 2

    async def buggy(learner_id: str) -> list[TrajectoryPoint]:
        raise ValueError("a bug, not an outage")

    inner.history = buggy  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        await store.history("l-1")
    assert store.breaker.state is State.CLOSED  # only the store's outage errors count


class Gated:
    """An Inference whose calls each wait for their own gate, then answer or fail as told."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future[GatewayError | None]] = []

    async def infer(self, texts: list[str]) -> list[Prediction]:
        gate: asyncio.Future[GatewayError | None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        error = await gate
        if error is not None:
            raise error
        return [Prediction([0.5] * 28, [], "v1") for _ in texts]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("late_outcome", ["failure", "success"])
async def test_only_the_probe_decides_a_half_open_circuit_not_a_call_admitted_before_it_opened(
    late_outcome: str,
):
    clock, inner = Clock(), Gated()
    wrapped = GuardedInference(
        inner, Breaker("the model server", 1, 5.0, clock=clock), on_reject=lambda: None
    )
    down = GatewayError("backend_unavailable", "down")
    stale = asyncio.create_task(wrapped.infer(["slow"]))  # admitted while closed, still running
    failing = asyncio.create_task(wrapped.infer(["x"]))
    assert await wait_for_async(lambda: len(inner.gates) == 2, 5)
    inner.gates[1].set_result(down)
    with pytest.raises(GatewayError):
        await failing
    assert wrapped.breaker.state is State.OPEN
    clock.now = 5.0
    probe = asyncio.create_task(wrapped.infer(["probe"]))
    assert await wait_for_async(lambda: len(inner.gates) == 3, 5)
    inner.gates[0].set_result(down if late_outcome == "failure" else None)  # the stale call ends
    if late_outcome == "failure":
        with pytest.raises(GatewayError):
            await stale
    else:
        await stale
    assert wrapped.breaker.state is State.HALF_OPEN  # still waiting for the probe's verdict
    inner.gates[2].set_result(None)
    await probe
    assert wrapped.breaker.state is State.CLOSED


def test_a_stale_admission_neither_counts_nor_frees_the_probe_slot():
    clock = Clock()
    breaker = Breaker("the model server", 2, 5.0, clock=clock)
    stale = breaker.acquire()
    breaker.failure(breaker.acquire())
    breaker.failure(breaker.acquire())
    assert breaker.state is State.OPEN
    clock.now = 5.0
    probe = breaker.acquire()
    breaker.release(stale)  # e.g. the stale call was cancelled: the probe is still the probe
    assert breaker.allow() is None
    breaker.failure(probe)
    assert breaker.state is State.OPEN and breaker.cool_down_s == 5.0
