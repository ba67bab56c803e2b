"""Per-learner baselines (gateway.learning.baseline): the exponentially weighted mean of a learner's own
recent points, the deviation every result reports, and risk read as the excess over it (policy setting)."""

from __future__ import annotations

import random

import pytest

from contract.names import GOEMOTIONS_LABELS, LEARNING_SIGNALS
from gateway.backends.cache import MemoryCache
from gateway.backends.trajectory import MemoryTrajectoryStore
from gateway.backends.triton import Prediction
from gateway.core.pipeline import Pipeline
from gateway.learning.baseline import learner_baseline
from gateway.learning.policy import INTERVENTION_LEVELS, Policy, PolicyError, load_policy
from gateway.learning.state import assess
from gateway.learning.trajectory import TrajectoryPoint
from gateway.metrics import Metrics
from tests.support.gateway import FakeClock

POLICY = load_policy()
MODERATE = INTERVENTION_LEVELS.index("moderate")


def with_baseline(**values: object) -> Policy:
    data = POLICY.model_dump()
    data["baseline"].update(values)
    return Policy.model_validate(data)


def point(t: float, readiness: float, valence: float = 0.5, **emotions: float) -> TrajectoryPoint:
    return TrajectoryPoint(
        t, readiness, valence, "none", "neutral", "v1", 0.5, emotions or {"frustration": 0.1}
    )


def probs(**given: float) -> dict[str, float]:
    values = dict.fromkeys((*GOEMOTIONS_LABELS, *LEARNING_SIGNALS), 0.01)
    values.update(given)
    return values


def test_the_baseline_is_the_exponentially_weighted_mean_once_formed():
    policy = with_baseline(half_life_points=2.0, min_points=3)
    alpha = 1 - 0.5 ** (1 / 2)
    points = [point(3, 0.8), point(1, 0.2), point(2, 0.4)]  # out of order: sorted by time
    assert learner_baseline(points[:2], policy) is None  # fewer than min_points
    baseline = learner_baseline(points, policy)
    assert baseline is not None and baseline.points == 3
    weights = [(1 - alpha) ** 2, 1 - alpha, 1.0]  # k = 2, 1, 0 messages back
    expected = sum(w * v for w, v in zip(weights, (0.2, 0.4, 0.8), strict=True)) / sum(weights)
    assert baseline.readiness_score == pytest.approx(expected)
    # the newest point weighs most: above the plain mean
    assert baseline.readiness_score > (0.2 + 0.4 + 0.8) / 3
    # points stored before arousal and emotions were kept count for readiness and valence only
    old = [TrajectoryPoint(t, 0.5, 0.5, "none", "neutral") for t in range(3)]
    assert learner_baseline(old, policy).arousal is None
    assert learner_baseline(old, policy).learning_emotions == {}


def test_a_bad_baseline_setting_is_refused():
    with pytest.raises(ValueError, match="could never form"):
        with_baseline(min_points=POLICY.trajectory.max_history + 1)
    with pytest.raises(ValueError):
        with_baseline(risk_from="relative")
    assert POLICY.baseline.risk_from == "absolute"  # the shipped default: hand-set risk, as before
    assert isinstance(PolicyError("x"), ValueError)


def mildly_negative(rng: random.Random) -> dict[str, float]:
    """A learner who always writes tersely and a bit negatively: the same mild mix, with noise."""
    return probs(
        annoyance=min(1.0, max(0.0, rng.gauss(0.55, 0.08))),
        disappointment=min(1.0, max(0.0, rng.gauss(0.45, 0.08))),
        sadness=min(1.0, max(0.0, rng.gauss(0.25, 0.05))),
        neutral=min(1.0, max(0.0, rng.gauss(0.3, 0.05))),
    )


def run_learner(policy: Policy, messages: list[dict[str, float]]) -> list[str]:
    """The levels a learner gets, each message against the baseline of the ones before it."""
    history: list[TrajectoryPoint] = []
    levels = []
    for t, p in enumerate(messages):
        state = assess(p, policy, baseline=learner_baseline(history, policy))
        levels.append(state.intervention_level)
        history.append(
            TrajectoryPoint(
                t, state.readiness_score, state.valence, state.intervention_level, "x", "v1",
                state.arousal, state.learning_emotions,
            )
        )  # fmt: skip
        history = history[-policy.trajectory.max_history :]
    return levels


def escalations(levels: list[str]) -> int:
    return sum(INTERVENTION_LEVELS.index(level) >= MODERATE for level in levels)


def test_a_constantly_negative_learner_stops_escalating_and_a_sudden_drop_still_does():
    rng = random.Random(17)
    usual = [mildly_negative(rng) for _ in range(40)]
    absolute = run_learner(POLICY, usual)
    deviation_policy = with_baseline(risk_from="deviation")
    relative = run_learner(deviation_policy, usual)
    # the target: false escalations of this learner drop by at least half
    assert escalations(absolute) >= 20
    assert escalations(relative) <= escalations(absolute) / 2
    # the first messages, before the baseline forms, are read as they are
    assert relative[: POLICY.baseline.min_points] == absolute[: POLICY.baseline.min_points]
    # a sudden drop (distress far past this learner's usual) still escalates
    drop = probs(annoyance=0.95, anger=0.85, nervousness=0.9, fear=0.8, sadness=0.7)
    assert INTERVENTION_LEVELS.index(run_learner(deviation_policy, [*usual, drop])[-1]) >= MODERATE
    # and so does giving up, even for a learner who says it every time (floors read absolute values)
    quitter = [probs(giving_up=0.9, sadness=0.6) for _ in range(12)]
    assert all(
        INTERVENTION_LEVELS.index(level) >= MODERATE for level in run_learner(deviation_policy, quitter)
    )


async def test_results_report_the_deviation_once_the_baseline_forms_and_lose_it_when_history_expires():
    class Triton:
        async def infer(self, texts: list[str]) -> list[Prediction]:
            return [Prediction([0.1] * 28, [], "v1") for _ in texts]

        async def ready(self) -> bool:
            return True

        async def close(self) -> None:
            return None

    clock = FakeClock()
    pipeline = Pipeline(
        triton=Triton(),
        cache=MemoryCache(100, 60),
        trajectories=MemoryTrajectoryStore(POLICY, timer=clock),
        policy=POLICY,
        metrics=Metrics(),
        wall_clock=clock,
    )
    needed = POLICY.baseline.min_points
    deviations = []
    for i in range(needed + 1):
        clock.advance(1)
        analysis = await pipeline.analyse([f"message {i}"], "ada", None)
        deviations.append(analysis.results[0].state.deviation)
    assert deviations[:needed] == [None] * needed
    formed = deviations[needed]
    assert formed is not None and formed["points"] == needed
    assert formed["readiness_score"] == pytest.approx(0.0, abs=1e-9)  # the same message every time
    assert set(formed["learning_emotions"]) == set(POLICY.learning_emotion_names)
    other = await pipeline.analyse(["message x"], "bob", None)  # another learner has none of it
    assert other.results[0].state.deviation is None
    clock.advance(POLICY.trajectory.ttl_seconds + 1)  # the history expires, and the baseline with it
    expired = await pipeline.analyse(["message y"], "ada", None)
    assert expired.results[0].state.deviation is None
