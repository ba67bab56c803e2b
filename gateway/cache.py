"""Result cache keyed by model version + normalized text, with single-flight for concurrent misses.

The version is the one Triton answered with (each answer carries it), never one read from a file: an
answer is stored under the version that produced it, and looked up under the version Triton serves now.
The gateway sends Triton the same normalized text it caches under, so a hit returns exactly what a
miss would have computed: the cache never changes a result. Redis errors degrade to "no cache"
(logged and counted), never to a failed request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from cachetools import TTLCache

from gateway.triton import Prediction

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

REDIS_RETRY_S = 5.0  # after a Redis failure, try it again this much later


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
    """In-process LRU with a TTL (cachetools)."""

    def __init__(self, maxsize: int, ttl_s: float) -> None:
        self._data: TTLCache[str, Prediction] = TTLCache(maxsize=maxsize, ttl=ttl_s)

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        return [self._data.get(k) for k in keys]

    async def set_many(self, items: dict[str, Prediction]) -> None:
        self._data.update(items)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    def __init__(
        self,
        client: Redis,
        ttl_s: float,
        prefix: str = "goemotions:result:",
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._redis = client
        self._retry_at = 0.0
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix
        self._on_error = on_error or (lambda: None)

    def _failed(self, exc: Exception) -> None:
        log.warning(
            "Redis cache unavailable (%s); serving without cache for %.0f s",
            type(exc).__name__,
            REDIS_RETRY_S,
        )
        # Back off: while Redis is down, requests must not each pay a connect timeout.
        self._retry_at = time.monotonic() + REDIS_RETRY_S
        self._on_error()

    def _down(self) -> bool:
        return time.monotonic() < self._retry_at

    async def get_many(self, keys: list[str]) -> list[Prediction | None]:
        from redis.exceptions import RedisError

        if self._down():
            return [None] * len(keys)
        try:
            raw = await self._redis.mget([self._prefix + k for k in keys])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        return [_decode(v) if v else None for v in raw]

    async def set_many(self, items: dict[str, Prediction]) -> None:
        from redis.exceptions import RedisError

        if self._down():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for k, p in items.items():
                    pipe.set(self._prefix + k, json.dumps(p.__dict__), px=self._ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

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


class SingleFlight:
    """Concurrent callers asking for the same keys share one computation per key."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Prediction]] = {}

    async def run(
        self, keys: list[str], compute: Callable[[list[str]], Awaitable[dict[str, Prediction]]]
    ) -> dict[str, Prediction]:
        loop = asyncio.get_running_loop()
        mine = [k for k in dict.fromkeys(keys) if k not in self._inflight]
        waiting = {k: self._inflight[k] for k in keys if k in self._inflight and k not in mine}
        for k in mine:
            self._inflight[k] = loop.create_future()
        results: dict[str, Prediction] = {}
        if mine:
            try:
                computed = await compute(mine)
            except BaseException as exc:
                for k in mine:
                    fut = self._inflight.pop(k)
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: waiters get it, no "never retrieved" warning
                raise
            for k in mine:
                self._inflight.pop(k).set_result(computed[k])
            results.update(computed)
        for k, fut in waiting.items():
            results[k] = await asyncio.shield(fut)
        return results
