"""Idempotency records: what a request sent with an ``Idempotency-Key`` answered, so that its retry gets
the same answer instead of a second analysis (a second trajectory point, audit row or outcome).

A record is claimed (``pending``) before the request runs and filled in (``done``) with the response body
when it succeeds; a failed request releases its claim so that its retry runs. Records live where the
learner store does: in process (``MemoryReplayStore``: one replica) or in the learner store's Redis
(``RedisReplayStore``: every replica sees every key; noeviction, so a record is never dropped early).
A record holding a learner's results is indexed by the learner's key, so erasing the learner erases it.
``GuardedReplayStore`` puts a store behind its breaker: a failure is ``StoreUnavailable``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from cachetools import LRUCache

from gateway.backends.trajectory import GuardedStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)
RECORD_OVERHEAD_BYTES = 256  # the key, fingerprint and bookkeeping beside a body, roughly


@dataclass(frozen=True)
class Record:
    """One key's record: the request's fingerprint, and its answer once there is one."""

    fingerprint: str
    state: Literal["pending", "done"]
    status: int = 0
    body: str = ""  # the JSON response body, as sent
    learner: str | None = None  # the learner key whose results the body holds

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def loads(raw: bytes | str) -> Record:
        return Record(**json.loads(raw))


class ReplayStore(Protocol):
    async def claim(self, key: str, record: Record, ttl_s: float) -> Record | None:
        """Store ``record`` (pending) under ``key`` unless the key holds one: None when claimed, else the
        record already there."""
        ...

    async def keep(self, key: str, record: Record, ttl_s: float) -> None:
        """Store the finished ``record`` under ``key`` for ``ttl_s`` seconds."""
        ...

    async def release(self, key: str) -> None: ...

    async def erase(self, learner: str) -> int:
        """Drop every record holding ``learner``'s results; how many there were."""
        ...


class MemoryReplayStore:
    """In process: at most ``max_bytes`` of kept answers (the least recently used goes first when full;
    an answer larger than the whole store is not kept)."""

    def __init__(self, max_bytes: int, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        # (record, expiry) per key: a pending claim expires sooner than a finished record
        self._records: LRUCache[str, tuple[Record, float]] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: len(entry[0].body) + RECORD_OVERHEAD_BYTES
        )
        self._lock = threading.Lock()

    def _live(self, key: str) -> Record | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= self._timer():
            del self._records[key]
            return None
        return entry[0]

    async def claim(self, key: str, record: Record, ttl_s: float) -> Record | None:
        with self._lock:
            held = self._live(key)
            if held is None:
                self._records[key] = (record, self._timer() + ttl_s)
            return held

    async def keep(self, key: str, record: Record, ttl_s: float) -> None:
        with self._lock:
            try:
                self._records[key] = (record, self._timer() + ttl_s)
            except ValueError:  # larger than the whole store: its retry runs again
                self._records.pop(key, None)

    async def release(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    async def erase(self, learner: str) -> int:
        with self._lock:
            keys = [k for k, (record, _) in self._records.items() if record.learner == learner]
            for key in keys:
                del self._records[key]
            return len(keys)


class RedisReplayStore:
    """In Redis: one string per key ("goemotions:replay:<key>") and, per learner, a set of the keys
    holding their results ("goemotions:replay-learner:<learner key>") that expires with the newest."""

    def __init__(self, client: Redis, prefix: str = "goemotions:replay:") -> None:
        self._client = client
        self._prefix = prefix
        self._learners = prefix.rstrip(":") + "-learner:"

    async def claim(self, key: str, record: Record, ttl_s: float) -> Record | None:
        name, ttl_ms = self._prefix + key, int(ttl_s * 1000)
        for _ in range(2):  # the record there may expire between SET NX and GET: then claim again
            if await self._client.set(name, record.dumps(), nx=True, px=ttl_ms):
                return None
            raw = await self._client.get(name)
            if raw is None:
                continue
            try:
                return Record.loads(raw)
            except (ValueError, TypeError):  # unreadable (another version wrote it): this claim replaces it
                log.warning("replacing an unreadable idempotency record")
                await self._client.set(name, record.dumps(), px=ttl_ms)
                return None
        return None

    async def keep(self, key: str, record: Record, ttl_s: float) -> None:
        name, ttl_ms = self._prefix + key, int(ttl_s * 1000)
        if record.learner is None:  # one command: no MULTI/EXEC to pay for
            await self._client.set(name, record.dumps(), px=ttl_ms)
            return
        index = self._learners + record.learner
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(name, record.dumps(), px=ttl_ms)
            pipe.sadd(index, name)
            pipe.pexpire(index, ttl_ms)
            await pipe.execute()

    async def release(self, key: str) -> None:
        await self._client.delete(self._prefix + key)

    async def erase(self, learner: str) -> int:
        index = self._learners + learner
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in await self._client.smembers(index)]
        if not names:
            return 0
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.exists(*names)
            pipe.delete(*names, index)
            counts = await pipe.execute()
        return int(counts[0])


class GuardedReplayStore(GuardedStore[ReplayStore]):
    """The records behind their breaker (``GuardedStore``): ``StoreUnavailable`` refuses the request with a
    503, since answering it without the record could analyse it twice."""

    consequence = "refusing requests that carry an Idempotency-Key"

    async def claim(self, key: str, record: Record, ttl_s: float) -> Record | None:
        return await self._guarded(lambda: self.inner.claim(key, record, ttl_s))

    async def keep(self, key: str, record: Record, ttl_s: float) -> None:
        await self._guarded(lambda: self.inner.keep(key, record, ttl_s))

    async def release(self, key: str) -> None:
        await self._guarded(lambda: self.inner.release(key))

    async def erase(self, learner: str) -> int:
        return await self._guarded(lambda: self.inner.erase(learner))
