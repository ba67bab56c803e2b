"""Learner history stores: bounded and expiring, in process (``MemoryTrajectoryStore``) or in Redis
(``RedisTrajectoryStore``, shared by several gateway workers). Each keeps at most ``max_history`` points
per learner and forgets a learner ``ttl_seconds`` after their last append. The learner id a store sees
is the core's tenant-scoped key ("<tenant>:<learner id>", ``gateway.core.tenants.learner_key``): one
tenant never reaches another's learner of the same id. ``GuardedTrajectoryStore``
puts a store behind the breaker: a failure or an open circuit is ``StoreUnavailable``, which costs the
caller the trend, never the answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Protocol, TypeVar

from cachetools import TTLCache

from gateway.learning.policy import Policy
from gateway.learning.trajectory import TrajectoryPoint
from gateway.resilience import Guarded

if TYPE_CHECKING:  # only the type: the memory store must work without importing redis
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")


class StoreUnavailable(Exception):
    """The learner store failed, or is resting after failures: answer without the trajectory."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when it may be asked again


class TrajectoryStore(Protocol):
    async def append(self, learner_id: str, point: TrajectoryPoint) -> None: ...

    async def history(self, learner_id: str) -> list[TrajectoryPoint]: ...

    async def erase(self, learner_id: str) -> int:
        """Forget the learner at once; the number of points removed (0 when there were none)."""
        ...


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

    async def erase(self, learner_id: str) -> int:
        _check_learner(learner_id)
        with self._lock:
            points = self._learners.pop(learner_id, None)
            return len(points) if points is not None else 0

    def __len__(self) -> int:
        """Learners currently held (expired ones are dropped first)."""
        with self._lock:
            self._learners.expire()
            return len(self._learners)


# Before tenants, a learner's list was "goemotions:trajectory:<learner id>", one namespace for every
# client. Those lists are never read again (they expire with their TTL); erasing a learner of the default
# tenant (the only tenant there was) deletes its old list as well.
LEGACY_PREFIX = "goemotions:trajectory:"
LEGACY_TENANT = "default:"


class RedisTrajectoryStore:
    """History in Redis: one list per learner ("goemotions:learner:<tenant>:<learner id>"), trimmed to
    ``max_history`` and expiring ``ttl_seconds`` after the last append."""

    def __init__(
        self,
        client: Redis,
        policy: Policy,
        prefix: str = "goemotions:learner:",
        legacy_prefix: str | None = LEGACY_PREFIX,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._legacy_prefix = legacy_prefix
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

    async def erase(self, learner_id: str) -> int:
        keys = [self.key(learner_id)]
        if self._legacy_prefix is not None and learner_id.startswith(LEGACY_TENANT):
            keys.append(self._legacy_prefix + learner_id.removeprefix(LEGACY_TENANT))
        async with self._client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            counts = await pipe.execute()
        return sum(int(n) for n in counts[:-1])


class GuardedStore(Guarded[S]):
    """A store of learner data behind a breaker: while its circuit is open it is not asked (requests must
    not each wait for a store that is down); a failure is logged and counted. Both raise
    ``StoreUnavailable``, with when to ask again."""

    async def _guarded(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.guard(fn)
        except self.unavailable as exc:
            raise StoreUnavailable(str(exc), self.breaker.retry_after_s()) from exc


class GuardedTrajectoryStore(GuardedStore[TrajectoryStore]):
    """The learner store behind its breaker (``GuardedStore``)."""

    consequence = "answering without the trajectory"

    async def append(self, learner_id: str, point: TrajectoryPoint) -> None:
        await self._guarded(lambda: self.inner.append(learner_id, point))

    async def history(self, learner_id: str) -> list[TrajectoryPoint]:
        return await self._guarded(lambda: self.inner.history(learner_id))

    async def erase(self, learner_id: str) -> int:
        return await self._guarded(lambda: self.inner.erase(learner_id))
