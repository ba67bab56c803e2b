"""The core pipeline without HTTP: primary emotion, the learner store behind its breaker (fake clock),
the concurrency limit, the served version (probe, swap log, background check with a fake sleep)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from contract.names import GOEMOTIONS_LABELS
from gateway.backends.cache import MemoryCache
from gateway.backends.trajectory import GuardedTrajectoryStore, MemoryTrajectoryStore, TrajectoryStore
from gateway.backends.triton import InvalidModelOutput, Prediction
from gateway.core.pipeline import PROBE_TEXT, Limits, Pipeline, primary_emotion
from gateway.errors import GatewayError
from gateway.learning.policy import load_policy
from gateway.learning.trajectory import TrajectoryPoint
from gateway.metrics import Metrics
from gateway.resilience import Breaker
from tests.support.gateway import FakeClock

STORE_RETRY_S = 5.0


class Triton:
    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.calls: list[list[str]] = []
        self.probabilities = [0.1] * 28
        self.hold: asyncio.Event | None = None

    async def infer(self, texts: list[str]) -> list[Prediction]:
        self.calls.append(texts)
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), 10)  # a broken limit fails the test, never hangs it
        return [Prediction(list(self.probabilities), [], self.version) for _ in texts]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class FailingStore(MemoryTrajectoryStore):
    """A learner store that is down while `down` is set; records the calls that reached it."""

    def __init__(self) -> None:
        super().__init__(load_policy())
        self.down = True
        self.calls: list[str] = []
        self.append_fails = False

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        self.calls.append("history")
        if self.down:
            raise RedisConnectionError("connection refused")
        return await super().history(learner_id)

    async def append(self, learner_id: str, point: TrajectoryPoint) -> None:
        self.calls.append("append")
        if self.down or self.append_fails:
            raise OSError("connection reset")
        await super().append(learner_id, point)


def make_pipeline(
    triton: Triton, store: TrajectoryStore | None = None, limits: Limits | None = None
) -> Pipeline:
    policy = load_policy()
    return Pipeline(
        triton=triton,
        cache=MemoryCache(100, 60),
        trajectories=store if store is not None else MemoryTrajectoryStore(policy),
        policy=policy,
        metrics=Metrics(),
        limits=limits,
    )


def guarded(store: FailingStore, clock: FakeClock, metrics: Metrics | None = None) -> GuardedTrajectoryStore:
    on_error = metrics.store_errors.inc if metrics is not None else None
    breaker = Breaker("the learner store", reset_s=STORE_RETRY_S, clock=clock)
    return GuardedTrajectoryStore(store, breaker, (RedisConnectionError, OSError), on_error)


def probs(**values: float) -> list[float]:
    return [values.get(name, 0.01) for name in GOEMOTIONS_LABELS]


def test_primary_emotion_is_the_most_probable_of_the_labels_or_neutral():
    # sadness is the most probable label overall, but under its threshold (not in labels)
    p = Prediction(probs(sadness=0.9, joy=0.6, gratitude=0.7), ["joy", "gratitude"], "v1")
    assert primary_emotion(p) == ("gratitude", 0.7)
    nothing = Prediction(probs(sadness=0.9, neutral=0.2), [], "v1")
    assert primary_emotion(nothing) == ("neutral", 0.2)
    assert primary_emotion(Prediction(probs(joy=0.4), ["joy"], "v1")) == ("joy", 0.4)


async def test_a_store_failure_costs_the_trend_and_the_store_is_left_alone_for_the_cool_down():
    clock, store = FakeClock(), FailingStore()
    pipeline = make_pipeline(Triton())
    pipeline.trajectories = guarded(store, clock, pipeline.metrics)
    analysis = await pipeline.analyse(["hello"], "learner-1")
    assert analysis.trend is None and len(analysis.results) == 1  # answered, without the trajectory
    assert store.calls == ["history"]  # no append after the history read failed
    assert pipeline.metrics.registry.get_sample_value("gateway_store_errors_total") == 1
    clock.advance(STORE_RETRY_S - 0.1)
    analysis = await pipeline.analyse(["hello"], "learner-1")
    assert analysis.trend is None and store.calls == ["history"]  # still resting: the store is not asked
    store.down = False
    clock.advance(0.1)
    analysis = await pipeline.analyse(["hello"], "learner-1")
    assert analysis.trend is not None and analysis.trend.points == 1
    assert store.calls == ["history", "history", "append"]
    assert pipeline.metrics.registry.get_sample_value("gateway_store_errors_total") == 1


async def test_an_append_failure_costs_the_trend_and_rests_the_store_too():
    clock, store = FakeClock(), FailingStore()
    store.down, store.append_fails = False, True
    pipeline = make_pipeline(Triton())
    pipeline.trajectories = guarded(store, clock)
    analysis = await pipeline.analyse(["a", "b"], "learner-1")
    assert analysis.trend is None and len(analysis.results) == 2
    assert store.calls == ["history", "append"]  # the second text's append is not tried
    analysis = await pipeline.analyse(["c"], "learner-1")
    assert analysis.trend is None and store.calls == ["history", "append"]  # resting
    store.append_fails = False
    clock.advance(STORE_RETRY_S)
    assert (await pipeline.analyse(["d"], "learner-1")).trend is not None


async def test_past_the_concurrency_limit_a_request_is_a_429_at_once():
    triton = Triton()
    triton.hold = asyncio.Event()
    pipeline = make_pipeline(triton, limits=Limits(max_concurrency=1, retry_after_s=3))
    first = asyncio.create_task(pipeline.analyse(["first"]))
    while not triton.calls:
        await asyncio.sleep(0)
    with pytest.raises(GatewayError) as refused:
        await pipeline.analyse(["second"])
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "3"}
    assert pipeline.metrics.registry.get_sample_value("gateway_overload_rejections_total") == 1
    triton.hold.set()
    await first
    assert pipeline.inflight == 0
    assert len((await pipeline.analyse(["third"])).results) == 1


async def test_the_analysis_and_trajectory_points_carry_the_answer_version():
    triton = Triton("v9")
    pipeline = make_pipeline(triton)
    analysis = await pipeline.analyse(["hello"], "learner-1")
    assert analysis.model_version == "v9" == pipeline.served.version
    [point] = await pipeline.trajectories.history("default:learner-1")  # the default tenant's learner
    assert point.model_version == "v9" and point.primary_emotion == "neutral"


async def test_a_new_served_version_is_logged_once(caplog):
    served = make_pipeline(Triton()).served
    with caplog.at_level(logging.INFO, logger="gateway.core.versions"):
        assert served.note("v1", 0) is True
        assert served.note("v1", 1) is False
        assert served.note("v2", 1) is True
        assert served.note("v2", 2) is False
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["serving model version v1", "model swapped from v1 to v2"]


async def test_a_late_answer_of_the_old_model_does_not_undo_a_swap():
    """During a swap the old model's in-flight answers arrive after the new model's first: a call
    started before the latest version change cannot change the served version back."""
    served = make_pipeline(Triton()).served
    assert served.note("old", served.changes)
    before_swap = served.changes  # a call to the old model starts here
    assert served.note("new", served.changes)  # a later call answers with the new model
    assert not served.note("old", before_swap)  # the first call's answer arrives last
    assert served.version == "new"


async def test_probe_sets_the_served_version_and_refuses_a_malformed_answer():
    triton = Triton("v1")
    pipeline = make_pipeline(triton)
    assert pipeline.served.version is None
    assert await pipeline.probe_version() == "v1" == pipeline.served.version
    assert triton.calls == [[PROBE_TEXT]]
    triton.probabilities = [0.1] * 27
    with pytest.raises(InvalidModelOutput, match="27 probabilities"):
        await pipeline.probe_version()
    assert pipeline.served.version == "v1"
    value = pipeline.metrics.registry.get_sample_value(
        "gateway_invalid_model_outputs_total", {"reason": "shape"}
    )
    assert value == 1


async def test_the_background_check_probes_every_interval_until_cancelled():
    triton = Triton("v1")
    pipeline = make_pipeline(triton)
    slept: list[float] = []
    probed = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            probed.set()
            await asyncio.Event().wait()  # park here until cancelled
        await asyncio.sleep(0)

    task = asyncio.create_task(pipeline.watch_version(2.5, sleep))
    await probed.wait()
    assert slept == [2.5, 2.5, 2.5] and len(triton.calls) == 2 and pipeline.served.version == "v1"
    triton.version = "v2"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()

    # a failing probe does not end the loop
    failures = 0

    class Down(Triton):
        async def infer(self, texts: list[str]) -> list[Prediction]:
            nonlocal failures
            failures += 1
            raise InvalidModelOutput("non_finite", "non-finite probabilities")

    pipeline = make_pipeline(Down())
    slept.clear()
    probed.clear()
    task = asyncio.create_task(pipeline.watch_version(1.0, sleep))
    await probed.wait()
    assert failures == 2 and pipeline.served.version is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
