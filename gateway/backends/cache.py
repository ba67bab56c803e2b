"""Result cache keyed by model version + normalized text.

The version is the one Triton answered with (each answer carries it), never one read from a file: an
answer is stored under the version that produced it, and looked up under the version Triton serves now.
The gateway sends Triton the same normalized text it caches under, so a hit returns exactly what a
miss would have computed: the cache never changes a result. ``RedisCache`` raises on a Redis failure;
``GuardedCache`` puts it behind the breaker and turns a failure into "no cache" (logged and counted),
never into a failed request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from cachetools import TTLCache

from gateway.backends.triton import Prediction
from gateway.resilience import Guarded

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


def cache_key(model_version: str, text: str) -> str:
    # Length-prefixed version: no (version, text) pair can collide with another by moving a separator.
    return hashlib.sha256(f"{len(model_version)}:{model_version}{text}".encode()).hexdigest()


class ResultCache(Protocol):
    async def get_many(self, keys: list[str]) -> list[Prediction | None]: ...
    async def set_many(self, items: dict[str, Prediction]) -> None: ...
    async def close(self) -> None: ...


class NoCache:
    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        return [None] * len(keys)

    async def set_many(self, items: dict[str, Prediction]) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """In-process LRU with a TTL (cachetools); ``timer`` is the clock the TTL runs on."""

    def __init__(self, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic) -> None:
        self._data: TTLCache[str, Prediction] = TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer)

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        return [self._data.get(k) for k in keys]

    async def set_many(self, items: dict[str, Prediction]) -> None:
        self._data.update(items)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Results in Redis, expiring ``ttl_s`` after they were written. Redis errors propagate."""

    def __init__(self, client: Redis, ttl_s: float, prefix: str = "goemotions:result:") -> None:
        self._redis = client
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        raw = await self._redis.mget([self._prefix + k for k in keys])
        return [_decode(v) if v else None for v in raw]

    async def set_many(self, items: dict[str, Prediction]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for k, p in items.items():
                pipe.set(self._prefix + k, json.dumps(p.__dict__), px=self._ttl_ms)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


def _decode(raw: bytes | str) -> Prediction | None:
    """A stored result, or None (a miss) for one this gateway cannot read (e.g. written by an older one)."""
    try:
        data = json.loads(raw)
        prediction = Prediction(
            [float(x) for x in data["probabilities"]],
            [str(x) for x in data["labels"]],
            str(data["model_version"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    return prediction


def redis_errors() -> tuple[type[Exception], ...]:
    """What a Redis outage raises (down, refusing, timing out); anything else is a bug and propagates."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class GuardedCache(Guarded[ResultCache]):
    """A cache behind a breaker that degrades to "no cache": while its circuit is open it is not asked
    (requests must not each pay a connect timeout), and a failure is a miss, logged and counted."""

    consequence = "serving without it until its circuit closes"

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        try:
            return await self.guard(lambda: self.inner.get_many(keys))
        except self.unavailable:
            return [None] * len(keys)

    async def set_many(self, items: dict[str, Prediction]) -> None:
        try:
            await self.guard(lambda: self.inner.set_many(items))
        except self.unavailable:
            return

    async def close(self) -> None:
        await self.inner.close()
