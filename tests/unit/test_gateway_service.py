"""gateway.service without HTTP: primary emotion, the learner-store back-off (fake clock), the served
version (probe, swap log, background check with a fake sleep)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from contract.names import GOEMOTIONS_LABELS
from gateway.cache import MemoryCache
from gateway.learning.policy import load_policy
from gateway.learning.trajectory import MemoryTrajectoryStore, TrajectoryPoint
from gateway.metrics import Metrics
from gateway.service import (
    PROBE_TEXT,
    STORE_RETRY_S,
    Core,
    analyse,
    note_version,
    primary_emotion,
    probe_version,
    watch_version,
)
from gateway.settings import Settings
from gateway.triton import InvalidModelOutput, Prediction


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Triton:
    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.calls: list[list[str]] = []
        self.probabilities = [0.1] * 28

    async def infer(self, texts: list[str]) -> list[Prediction]:
        self.calls.append(texts)
        return [Prediction(list(self.probabilities), [], self.version) for _ in texts]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class FailingStore(MemoryTrajectoryStore):
    """A learner store that is down while `down` is set; counts the calls that reached it."""

    def __init__(self) -> None:
        super().__init__(load_policy())
        self.down = True
        self.calls = 0

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("connection refused")
        return await super().history(learner_id)

    async def append(self, learner_id: str, point: TrajectoryPoint) -> None:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("connection refused")
        await super().append(learner_id, point)


def make_core(triton: Triton, store: MemoryTrajectoryStore | None = None, clock: Clock | None = None) -> Core:
    policy = load_policy()
    return Core(
        settings=Settings(_env_file=None),
        triton=triton,
        cache=MemoryCache(100, 60),
        trajectories=store if store is not None else MemoryTrajectoryStore(policy),
        policy=policy,
        metrics=Metrics(),
        api_keys=[],
        clock=clock or Clock(),
    )


def probs(**values: float) -> list[float]:
    return [values.get(name, 0.01) for name in GOEMOTIONS_LABELS]


def test_primary_emotion_is_the_most_probable_of_the_labels_or_neutral():
    # sadness is the most probable label overall, but under its threshold (not in labels)
    p = Prediction(probs(sadness=0.9, joy=0.6, gratitude=0.7), ["joy", "gratitude"], "v1")
    assert primary_emotion(p) == ("gratitude", 0.7)
    nothing = Prediction(probs(sadness=0.9, neutral=0.2), [], "v1")
    assert primary_emotion(nothing) == ("neutral", 0.2)
    assert primary_emotion(Prediction(probs(joy=0.4), ["joy"], "v1")) == ("joy", 0.4)


async def test_a_store_failure_backs_off_for_store_retry_s():
    clock, store = Clock(), FailingStore()
    core = make_core(Triton(), store, clock)
    outcome = await analyse(core, ["hello"], "learner-1", None)
    assert outcome.trend is None and store.calls == 1
    assert core.store_retry_at == clock.now + STORE_RETRY_S
    assert core.metrics.registry.get_sample_value("gateway_store_errors_total") == 1
    clock.now += STORE_RETRY_S - 0.1
    outcome = await analyse(core, ["hello"], "learner-1", None)
    assert outcome.trend is None and store.calls == 1  # still backing off: the store is not asked
    store.down = False
    clock.now += 0.1
    outcome = await analyse(core, ["hello"], "learner-1", None)
    assert outcome.trend is not None and store.calls == 3  # history, then the append


async def test_an_append_failure_backs_off_too():
    clock, store = Clock(), FailingStore()
    store.down = False
    core = make_core(Triton(), store, clock)

    async def failing_append(learner_id: str, point: TrajectoryPoint) -> None:
        raise OSError("connection reset")

    store.append = failing_append  # type: ignore[method-assign]
    await analyse(core, ["a", "b"], "learner-1", None)
    assert core.store_retry_at == clock.now + STORE_RETRY_S


async def test_outcome_and_trajectory_points_carry_the_answer_version():
    triton = Triton("v9")
    core = make_core(triton)
    outcome = await analyse(core, ["hello"], "learner-1", None)
    assert outcome.model_version == "v9" == core.served_version
    [point] = await core.trajectories.history("learner-1")
    assert point.model_version == "v9" and point.primary_emotion == "neutral"


async def test_note_version_logs_a_swap_once(caplog):
    core = make_core(Triton())
    with caplog.at_level(logging.INFO, logger="gateway.service"):
        assert note_version(core, "v1", 0) is True
        assert note_version(core, "v1", 1) is False
        assert note_version(core, "v2", 1) is True
        assert note_version(core, "v2", 2) is False
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["serving model version v1", "model swapped from v1 to v2"]


async def test_a_late_answer_of_the_old_model_does_not_undo_a_swap():
    """During a swap the old model's in-flight answers arrive after the new model's first: a call
    started before the latest version change cannot change the served version back."""
    core = make_core(Triton())
    assert note_version(core, "old", core.version_changes)
    before_swap = core.version_changes  # a call to the old model starts here
    assert note_version(core, "new", core.version_changes)  # a later call answers with the new model
    assert not note_version(core, "old", before_swap)  # the first call's answer arrives last
    assert core.served_version == "new"


async def test_probe_sets_the_served_version_and_refuses_a_malformed_answer():
    triton = Triton("v1")
    core = make_core(triton)
    assert core.served_version is None
    assert await probe_version(core) == "v1" == core.served_version
    assert triton.calls == [[PROBE_TEXT]]
    triton.probabilities = [0.1] * 27
    with pytest.raises(InvalidModelOutput, match="27 probabilities"):
        await probe_version(core)
    assert core.served_version == "v1"
    value = core.metrics.registry.get_sample_value("gateway_invalid_model_outputs_total", {"reason": "shape"})
    assert value == 1


async def test_the_background_check_probes_every_interval_until_cancelled():
    triton = Triton("v1")
    core = make_core(triton)
    slept: list[float] = []
    probed = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            probed.set()
            await asyncio.Event().wait()  # park here until cancelled
        await asyncio.sleep(0)

    task = asyncio.create_task(watch_version(core, 2.5, sleep))
    await probed.wait()
    assert slept == [2.5, 2.5, 2.5] and len(triton.calls) == 2 and core.served_version == "v1"
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

    core = make_core(Down())
    slept.clear()
    probed.clear()
    task = asyncio.create_task(watch_version(core, 1.0, sleep))
    await probed.wait()
    assert failures == 2 and core.served_version is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
