"""A learner's readiness over time: the points, and the trend classifier (pure; rules in policy.toml,
[trajectory]). The stores that keep the points are backends (``gateway.backends.trajectory``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.learning.policy import Policy, TrajectoryPolicy


@dataclass(frozen=True)
class TrajectoryPoint:
    timestamp: float  # seconds (epoch or monotonic, but one clock per learner)
    readiness_score: float
    valence: float
    intervention_level: str
    primary_emotion: str
    model_version: str | None = None  # the model that answered (None in points stored before it was kept)
    # for the learner's baseline (None in points stored before it was kept)
    arousal: float | None = None
    learning_emotions: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be finite, got {self.timestamp!r}")
        values = {"readiness_score": self.readiness_score, "valence": self.valence}
        if self.arousal is not None:
            values["arousal"] = self.arousal
        for name, value in {**values, **(self.learning_emotions or {})}.items():
            if not 0.0 <= value <= 1.0:  # also rejects NaN
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class Trend:
    label: str  # improving | stable | declining | volatile | recovering | insufficient_data
    slope: float | None  # readiness per assessment (least squares); None with insufficient data
    volatility: float | None  # RMS residual around the fitted line; None with insufficient data
    points: int  # how many points the classification used


def _fit(ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per index and RMS residual around that line."""
    n = len(ys)
    mean_x = (n - 1) / 2
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sxx
    residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in enumerate(ys)]
    return slope, math.sqrt(sum(r * r for r in residuals) / n)


def _recovering(ys: Sequence[float], cfg: TrajectoryPolicy) -> bool:
    """A dip below the cut that the latest points are climbing out of (see policy.toml)."""
    # the latest occurrence of the minimum: the dip the learner is climbing out of now
    low_index = min(range(len(ys)), key=lambda i: (ys[i], -i))
    low = ys[low_index]
    rise = ys[-(cfg.recovering_rise_points + 1) :]
    return (
        low < cfg.recovering_below
        and low_index > 0
        and max(ys[:low_index]) - low >= cfg.recovering_min_rise
        and all(b > a for a, b in itertools.pairwise(rise))
        and ys[-1] - low >= cfg.recovering_min_rise
    )


def classify_trend(points: Sequence[TrajectoryPoint], policy: Policy) -> Trend:
    """Classify the readiness trend of the last ``window`` points (by timestamp); rules in policy.toml."""
    cfg = policy.trajectory
    recent = sorted(points, key=lambda p: p.timestamp)[-cfg.window :]
    if len(recent) < cfg.min_points:
        return Trend("insufficient_data", None, None, len(recent))
    ys = [p.readiness_score for p in recent]
    slope, volatility = _fit(ys)
    if _recovering(ys, cfg):
        label = "recovering"
    elif volatility >= cfg.volatility_threshold:
        label = "volatile"
    elif slope >= cfg.slope_threshold:
        label = "improving"
    elif slope <= -cfg.slope_threshold:
        label = "declining"
    else:
        label = "stable"
    return Trend(label, slope, volatility, len(recent))
