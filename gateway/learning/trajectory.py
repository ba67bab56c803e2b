"""A learner's readiness over time: the trend classifier and two bounded, expiring history stores.

``classify_trend`` is pure (rules in policy.toml, [trajectory]). The stores keep at most ``max_history``
points per learner and forget a learner ``ttl_seconds`` after their last append: in process
(``MemoryTrajectoryStore``) or in Redis (``RedisTrajectoryStore``, shared by several gateway workers).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from cachetools import TTLCache

from gateway.learning.policy import Policy, TrajectoryPolicy

if TYPE_CHECKING:  # only the type: the memory store must work without importing redis
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrajectoryPoint:
    timestamp: float  # seconds (epoch or monotonic, but one clock per learner)
    readiness_score: float
    valence: float
    intervention_level: str
    primary_emotion: str
    model_version: str | None = None  # the model that answered (None in points stored before it was kept)

    def __post_init__(self) -> None:
        if not math.isfinite(self.timestamp):
            raise ValueError(f"timestamp must be finite, got {self.timestamp!r}")
        for name in ("readiness_score", "valence"):
            value = getattr(self, name)
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


class TrajectoryStore(Protocol):
    async def append(self, learner_id: str, point: TrajectoryPoint) -> None: ...

    async def history(self, learner_id: str) -> list[TrajectoryPoint]: ...


def _check_learner(learner_id: str) -> None:
    if not isinstance(learner_id, str) or not learner_id:
        raise ValueError(f"learner_id must be a non-empty string, got {learner_id!r}")


class MemoryTrajectoryStore:
    """In-process history: ``maxsize`` learners at most, ``max_history`` points each, TTL from last append."""

    def __init__(
        self, policy: Policy, maxsize: int = 100_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._max_history = policy.trajectory.max_history
        # TTLCache evicts the least recently used learner when full and drops expired ones on access.
        self._learners: TTLCache[str, deque[TrajectoryPoint]] = TTLCache(
            maxsize=maxsize, ttl=policy.trajectory.ttl_seconds, timer=timer
        )
        # The methods never await while holding it, so a plain lock also covers worker threads.
        self._lock = threading.Lock()

    async def append(self, learner_id: str, point: TrajectoryPoint) -> None:
        _check_learner(learner_id)
        with self._lock:
            points = self._learners.get(learner_id)
            if points is None:
                points = deque(maxlen=self._max_history)
            points.append(point)
            # Re-inserting restarts the TTL: history expires ttl_seconds after the last append (like EXPIRE).
            self._learners[learner_id] = points

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        _check_learner(learner_id)
        with self._lock:
            points = self._learners.get(learner_id)
            return list(points) if points is not None else []

    def __len__(self) -> int:
        """Learners currently held (expired ones are dropped first)."""
        with self._lock:
            self._learners.expire()
            return len(self._learners)


class RedisTrajectoryStore:
    """History in Redis: one list per learner, trimmed to ``max_history`` and expiring ``ttl_seconds`` after
    the last append."""

    def __init__(self, client: Redis, policy: Policy, prefix: str = "goemotions:trajectory:") -> None:
        self._client = client
        self._prefix = prefix
        self._max_history = policy.trajectory.max_history
        self._ttl_seconds = policy.trajectory.ttl_seconds

    def key(self, learner_id: str) -> str:
        _check_learner(learner_id)
        return f"{self._prefix}{learner_id}"

    async def append(self, learner_id: str, point: TrajectoryPoint) -> None:
        key = self.key(learner_id)
        payload = json.dumps(asdict(point), separators=(",", ":"))
        # One MULTI/EXEC: another worker never sees the list untrimmed or without its expiry.
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, payload)
            pipe.ltrim(key, -self._max_history, -1)
            pipe.expire(key, self._ttl_seconds)
            await pipe.execute()

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        key = self.key(learner_id)
        points: list[TrajectoryPoint] = []
        for raw in await self._client.lrange(key, 0, -1):
            try:
                points.append(TrajectoryPoint(**json.loads(raw)))
            except (ValueError, TypeError) as exc:
                # One corrupt entry (e.g. written by another version) must not cost the whole history.
                log.warning("skipping unreadable trajectory entry in %s: %s", key, exc)
        return points
