"""Rate limits per API key (per client address when auth is off) and per tenant, on the ``limits`` library's
moving window: at most N requests in any window (no 2x burst across a fixed boundary).

Where the counts live decides what the limit means:
- Redis (``limits.aio.storage.RedisStorage``): one count per key shared by every gateway replica, so
  "600/minute" is 600 per minute for the whole deployment, however many replicas the autoscaler runs.
- process memory (``limits.aio.storage.MemoryStorage``): one count per replica, so with R replicas a
  client can get up to R times the limit (the load balancer decides how its requests spread).

A Redis outage must not take the API down: the limiter sits behind the one breaker (gateway.resilience)
and *fails open* — a request it cannot count is admitted, logged (once per outage, when the circuit
opens) and counted (``gateway_rate_limit_unchecked_total``). Identifiers are hashed before they become
storage keys, so Redis never holds an API key.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.resilience import Breaker, Guarded


def parse_limit(text: str | None) -> RateLimitItem | None:
    """``"600/minute"``, ``"10 per second"``, ``"100/5 minutes"`` (``limits`` notation) → the item;
    blank, ``"0"`` or ``"off"`` → None (no limit). Raises ValueError on anything else."""
    text = (text or "").strip()
    if text.lower() in ("", "0", "off"):
        return None
    item = parse(text)
    if item.amount < 1:
        raise ValueError(f"a rate limit must admit at least one request, got {text!r}")
    return item


def describe(item: RateLimitItem) -> str:
    """``600 requests per minute``, ``10 requests per 2 seconds``."""
    unit = item.GRANULARITY.name
    per = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount} requests per {per}"


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class Refusal:
    """A request over a limit: which one (``key`` or ``tenant``) and when a slot frees up."""

    scope: str
    limit: RateLimitItem
    retry_after_s: float

    @property
    def message(self) -> str:
        whose = "this tenant's" if self.scope == "tenant" else "the"
        return f"{whose} rate limit of {describe(self.limit)} reached; retry later"


def _storage_key(identifier: str) -> str:
    # An API key must not become a Redis key name (visible to anyone who can run SCAN).
    return hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter(Guarded[Storage]):
    """``per_key`` and ``per_tenant`` limits (either may be None) counted in ``storage``. ``shared`` says
    whether every replica sees the same counts (Redis) or each its own (memory); ``errors`` are the
    storage's outage errors (none for memory), which fail open."""

    consequence = "admitting requests without a rate-limit check (fail open)"

    def __init__(
        self,
        storage: Storage,
        breaker: Breaker,
        *,
        per_key: RateLimitItem | None,
        per_tenant: RateLimitItem | None = None,
        shared: bool,
        errors: tuple[type[Exception], ...] = (),
        on_error: Callable[[], None] | None = None,
        on_unchecked: Callable[[], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(storage, breaker, errors, on_error)
        self.per_key = per_key
        self.per_tenant = per_tenant
        self.shared = shared
        self._strategy = MovingWindowRateLimiter(storage)
        self._on_unchecked = on_unchecked or (lambda: None)
        self._wall_clock = wall_clock  # the storages stamp entries with time.time()

    @property
    def where(self) -> str:
        return "shared by every replica (Redis)" if self.shared else "per replica (process memory)"

    async def check(self, client: str, tenant: str | None = None) -> Refusal | None:
        """Count one request for ``client`` (and its ``tenant``): the ``Refusal`` when a limit is reached,
        None when it may pass — also when the storage is unavailable (fail open). The key's limit is
        checked first, so a key over its own limit does not use up its tenant's (a request its tenant's
        limit refuses has counted against its key)."""
        checks = [("key", self.per_key, client), ("tenant", self.per_tenant, tenant)]
        for scope, item, identifier in checks:
            if item is None or identifier is None:
                continue
            refusal = await self._hit(scope, item, _storage_key(f"{scope}:{identifier}"))
            if refusal is not None:
                return refusal
        return None

    async def _hit(self, scope: str, item: RateLimitItem, key: str) -> Refusal | None:
        async def hit() -> bool:
            return await self._strategy.hit(item, key)

        try:
            admitted = await self.guard(hit)
        except self.unavailable:
            self._on_unchecked()
            return None
        return None if admitted else Refusal(scope, item, await self._wait_s(item, key))

    async def _wait_s(self, item: RateLimitItem, key: str) -> float:
        """Seconds until the oldest request in the window leaves it (the whole window if unknown)."""
        try:
            stats = await self.guard(lambda: self._strategy.get_window_stats(item, key))
        except self.unavailable:
            return float(item.get_expiry())
        return min(float(item.get_expiry()), max(0.0, stats.reset_time - self._wall_clock()))
