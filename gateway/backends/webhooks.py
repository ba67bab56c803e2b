"""Webhook delivery: signed POSTs to a tenant's URL, from a bounded queue, off the request path.

Each delivery is signed with the tenant's secret: ``X-GoEmotions-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``<X-GoEmotions-Timestamp>.<body>``, so the receiver can check who sent it and refuse an
old one replayed (the scheme Stripe and GitHub use). A delivery that fails (a transport error, or any
status but 2xx) is queued again after ``backoff_s``, twice that, and so on, ``attempts`` tries in all;
then it is dropped and counted. A few workers post at once and a retry waits off the workers, so one
tenant's broken receiver does not hold up the others' alerts. The queue is per replica and in memory: what
is queued when a replica dies is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx
from cachetools import TTLCache

from gateway.metrics import Metrics
from gateway.resilience import Guarded

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-GoEmotions-Signature"
TIMESTAMP_HEADER = "X-GoEmotions-Timestamp"
EVENT_HEADER = "X-GoEmotions-Event-Id"
FORGET_S = 3600.0  # how long an erased learner's queued deliveries are recognised (far past any queue wait)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    url: str
    secret: bytes
    body: bytes  # the JSON event
    event_id: str
    learner: str  # the tenant-scoped learner key: an erasure drops what is still queued for it
    level: int  # the intervention level's index: the cool-down compares it with the last one alerted


class Cooldown(Protocol):
    async def claim(self, learner: str, level: int) -> bool:
        """Whether to alert for ``learner`` at ``level`` now: yes when no alert is cooling down for them or
        ``level`` is higher than the one that was; a yes starts the cool-down at ``level``."""
        ...

    async def forget(self, learner: str) -> None: ...


class MemoryCooldown:
    """Per replica: with R replicas a learner may be alerted up to R times within a cool-down."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._alerted: TTLCache[str, int] = TTLCache(maxsize=100_000, ttl=max(ttl_s, 1e-9), timer=clock)
        self._off = ttl_s <= 0

    async def claim(self, learner: str, level: int) -> bool:
        last = self._alerted.get(learner)
        if last is not None and level <= last:
            return False
        if not self._off:
            self._alerted[learner] = level
        return True

    async def forget(self, learner: str) -> None:
        self._alerted.pop(learner, None)


# one atomic compare-and-set: alert only above the level cooling down, and start the cool-down at it
_CLAIM = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisCooldown:
    """In the learner store's Redis ("goemotions:alerted:<learner key>"): one cool-down for every replica."""

    def __init__(self, client: Redis, ttl_s: float, prefix: str = "goemotions:alerted:") -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)

    async def claim(self, learner: str, level: int) -> bool:
        return bool(await self._claim(keys=[self._prefix + learner], args=[level, self._ttl_ms]))

    async def forget(self, learner: str) -> None:
        await self._client.delete(self._prefix + learner)


class GuardedCooldown(Guarded[Cooldown]):
    """A cool-down behind its breaker that fails open: while its store is down, alerts are sent (a tutor
    paged twice beats one not paged)."""

    consequence = "sending alerts without the cool-down"

    async def claim(self, learner: str, level: int) -> bool:
        try:
            return await self.guard(lambda: self.inner.claim(learner, level))
        except self.unavailable:
            return True

    async def forget(self, learner: str) -> None:
        try:
            await self.guard(lambda: self.inner.forget(learner))
        except self.unavailable:
            log.warning("an erased learner's alert cool-down could not be removed (it expires by itself)")


class WebhookSender:
    """``workers`` tasks posting queued deliveries. ``submit`` never waits: a full queue drops."""

    def __init__(
        self,
        metrics: Metrics,
        cooldown: Cooldown,
        *,
        queue_size: int = 1000,
        attempts: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 5.0,
        workers: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._count = metrics.alerts
        self.cooldown = cooldown
        # (submission number, try, delivery): an erasure drops what was submitted before it for its learner
        self.queue: asyncio.Queue[tuple[int, int, Delivery]] = asyncio.Queue(maxsize=queue_size)
        self._submitted = 0
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport, follow_redirects=False)
        self._workers_wanted = workers
        self._wall_clock = wall_clock
        self._erased: TTLCache[str, int] = TTLCache(maxsize=100_000, ttl=FORGET_S, timer=clock)
        self._workers: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()

    def submit(self, delivery: Delivery) -> bool:
        try:
            self.queue.put_nowait((self._submitted + 1, 0, delivery))
        except asyncio.QueueFull:
            self._count.labels("dropped").inc()
            log.warning("alert queue full: an alert was dropped")
            return False
        self._submitted += 1
        return True

    async def forget(self, learner: str) -> None:
        """The learner was erased: what is queued for them is not sent, and their cool-down ends."""
        self._erased[learner] = self._submitted
        await self.cooldown.forget(learner)

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._run(), name=f"webhook-sender-{i}") for i in range(self._workers_wanted)
        ]

    async def stop(self, drain_s: float = 5.0) -> None:
        """Send what is queued for up to ``drain_s`` seconds, then stop (what is left is dropped)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), drain_s)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for retry in self._retries:
            retry.cancel()
        left = self.queue.qsize() + len(self._retries)
        self._retries.clear()
        if left:
            self._count.labels("dropped").inc(left)
            log.warning("%d queued alerts dropped at shutdown", left)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            number, attempt, delivery = await self.queue.get()
            try:
                await self._try(number, attempt, delivery)
            except Exception:  # a bug must not stop the sender
                log.exception("alert delivery failed unexpectedly")
                self._count.labels("failed").inc()
            finally:
                self.queue.task_done()

    async def _try(self, number: int, attempt: int, delivery: Delivery) -> None:
        erased_after = self._erased.get(delivery.learner)
        if erased_after is not None and number <= erased_after:
            self._count.labels("erased").inc()
            return
        if attempt == 0 and not await self.cooldown.claim(delivery.learner, delivery.level):
            self._count.labels("suppressed").inc()
            return
        if await self._post(delivery):
            self._count.labels("sent").inc()
            return
        if attempt + 1 >= self.attempts:
            self._count.labels("failed").inc()
            log.warning("alert %s not delivered after %d attempts", delivery.event_id, self.attempts)
            return
        item = (number, attempt + 1, delivery)
        handles: list[asyncio.TimerHandle] = []  # the callback removes its own handle from the set
        delay = self.backoff_s * 2**attempt
        handles.append(asyncio.get_running_loop().call_later(delay, self._requeue, handles, item))
        self._retries.add(handles[0])

    def _requeue(self, handles: list[asyncio.TimerHandle], item: tuple[int, int, Delivery]) -> None:
        self._retries.discard(handles[0])
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._count.labels("dropped").inc()
            log.warning("alert queue full: a retry was dropped")

    async def _post(self, delivery: Delivery) -> bool:
        timestamp = str(int(self._wall_clock()))
        headers = {
            "content-type": "application/json",
            EVENT_HEADER: delivery.event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(delivery.secret, timestamp, delivery.body),
        }
        try:
            response = await self._client.post(delivery.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            log.info("alert %s: %s", delivery.event_id, type(exc).__name__)
            return False
        if not response.is_success:
            log.info("alert %s: the receiver answered %d", delivery.event_id, response.status_code)
        return response.is_success
