"""A learner's own baseline: the exponentially weighted mean of their recent points (pure; settings in
policy.toml, [baseline]). It lives in the trajectory history, so it is tenant-scoped, bounded by
``max_history`` and expires with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.learning.policy import Policy
from gateway.learning.trajectory import TrajectoryPoint


@dataclass(frozen=True)
class Baseline:
    points: int  # how many points it was formed from
    readiness_score: float
    valence: float
    arousal: float | None  # None when no point kept it
    learning_emotions: dict[str, float]  # those every point kept

    def deviation(
        self, readiness_score: float, valence: float, arousal: float, learning_emotions: dict[str, float]
    ) -> dict[str, object]:
        """Now minus the baseline, per input (what the result reports)."""
        return {
            "points": self.points,
            "readiness_score": readiness_score - self.readiness_score,
            "valence": valence - self.valence,
            "arousal": None if self.arousal is None else arousal - self.arousal,
            "learning_emotions": {
                name: learning_emotions[name] - value
                for name, value in self.learning_emotions.items()
                if name in learning_emotions
            },
        }


def _ewm(values: Sequence[float], alpha: float) -> float:
    """sum_k w_k x_k / sum_k w_k with w_k = (1 - alpha) ** k, k messages back (the oldest does not
    dominate a short history, as seeding a running mean with it would)."""
    weights = [(1.0 - alpha) ** k for k in range(len(values) - 1, -1, -1)]
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def learner_baseline(points: Sequence[TrajectoryPoint], policy: Policy) -> Baseline | None:
    """The baseline of ``points`` (oldest first by timestamp), or None before ``min_points`` of them."""
    cfg = policy.baseline
    ordered = sorted(points, key=lambda p: p.timestamp)
    if len(ordered) < cfg.min_points:
        return None
    alpha = cfg.alpha
    arousal = [p.arousal for p in ordered if p.arousal is not None]
    with_emotions = [p.learning_emotions for p in ordered if p.learning_emotions is not None]
    names = set.intersection(*(set(e) for e in with_emotions)) if with_emotions else set()
    return Baseline(
        points=len(ordered),
        readiness_score=_ewm([p.readiness_score for p in ordered], alpha),
        valence=_ewm([p.valence for p in ordered], alpha),
        arousal=_ewm(arousal, alpha) if arousal else None,
        learning_emotions={name: _ewm([e[name] for e in with_emotions], alpha) for name in sorted(names)},
    )
