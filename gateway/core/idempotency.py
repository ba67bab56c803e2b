"""``Idempotency-Key``: a request retried with the key it was first sent with is answered, not run again.

A platform retries when it cannot tell whether a request was done (a timeout, a dropped connection, a
503). Without a key, a retried analysis with a learner id is a second trajectory point and a second
audit row, and a retried outcome a second outcome: the tutor alert fires twice, the policy fit counts twice.
With one (any 1 to 255 visible ASCII characters, e.g. a UUID, chosen by the client per logical request):

- the first request runs and its 2xx answer is kept for ``ttl_s`` (a failed one keeps nothing: its retry
  runs);
- the same key with the same request (same route, same JSON body) gets the kept answer again, marked
  ``Idempotent-Replayed: true``;
- the same key while the first is still running: 409 ``request_in_progress`` with ``Retry-After``;
- the same key with another request: 422 ``idempotency_key_reused``;
- keys are the caller's tenant's: another tenant's request with the same key is its own;
- the store unreachable: 503 with ``Retry-After`` (running it unrecorded could run it twice).

The semantics follow the IETF draft "The Idempotency-Key HTTP Header Field" (httpapi working group).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.backends.replays import Record, ReplayStore
from gateway.backends.trajectory import StoreUnavailable
from gateway.core.tenants import learner_key
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
# A claim outlives any request that can still finish (Triton's deadline is seconds); a gateway that died
# mid-request leaves a claim that expires after this.
PENDING_TTL_S = 120.0


@dataclass
class Once:
    """The route's side of one keyed request: ``stored`` is the answer to replay (then the route runs
    nothing), else the route runs and hands its answer to ``keep``."""

    stored: Record | None = None
    status: int = 0
    body: str = ""

    def keep(self, status: int, payload: Any) -> None:
        self.status = status
        self.body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def fingerprint(operation: str, request: Mapping[str, Any]) -> str:
    """The same route and the same JSON body (key order and spacing aside) give the same fingerprint."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{operation}\n{canonical}".encode()).hexdigest()


def scoped(tenant: str, key: str) -> str:
    # length-prefixed: no (tenant, key) pair collides with another by moving the boundary
    return hashlib.sha256(f"{len(tenant)}:{tenant}{key}".encode()).hexdigest()


def _unavailable(exc: StoreUnavailable) -> GatewayError:
    return GatewayError(
        ErrorCode.BACKEND_UNAVAILABLE,
        "the idempotency store is unavailable, so this keyed request was not run; retry later with the "
        "same key",
        {"Retry-After": str(exc.retry_after_s)},
    )


class Replays:
    """Keyed requests, recorded in ``store`` (the learner store's backend) for ``ttl_s`` seconds."""

    def __init__(
        self, store: ReplayStore, ttl_s: float, metrics: Metrics, pending_ttl_s: float = PENDING_TTL_S
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.pending_ttl_s = pending_ttl_s
        self._count = metrics.idempotent_requests

    @contextlib.asynccontextmanager
    async def once(
        self,
        tenant: str,
        key: str | None,
        operation: str,
        request: Mapping[str, Any],
        learner_id: str | None = None,
    ) -> AsyncIterator[Once]:
        """Around one request: without a key, nothing. With one, claim it (or replay, or refuse), and
        after the route ran keep its answer, or release the claim when it failed."""
        if key is None:
            yield Once()
            return
        name = scoped(tenant, key)
        mark = fingerprint(operation, request)
        learner = learner_key(tenant, learner_id) if learner_id else None
        try:
            held = await self.store.claim(name, Record(mark, "pending", learner=learner), self.pending_ttl_s)
        except StoreUnavailable as exc:
            self._count.labels("unavailable").inc()
            raise _unavailable(exc) from None
        if held is not None:
            yield self._replay(held, mark)
            return
        once = Once()
        try:
            yield once
        except BaseException:
            await self._release(name)
            raise
        if not once.body:  # the route kept nothing: nothing to replay, let a retry run
            await self._release(name)
            return
        try:
            await self.store.keep(name, Record(mark, "done", once.status, once.body, learner), self.ttl_s)
        except StoreUnavailable:
            # It ran and its answer goes out; a retry within the claim's life gets 409, after it runs again.
            self._count.labels("unsaved").inc()
            log.warning("an idempotent request's answer could not be recorded (store unavailable)")
            return
        self._count.labels("first").inc()

    def _replay(self, held: Record, mark: str) -> Once:
        if held.fingerprint != mark:
            self._count.labels("key_reused").inc()
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                f"this {HEADER} was used for another request (another route or body); use a new key for "
                "a new request",
            )
        if held.state == "pending":
            self._count.labels("in_progress").inc()
            raise GatewayError(
                ErrorCode.REQUEST_IN_PROGRESS,
                f"a request with this {HEADER} is still running; retry later with the same key",
                {"Retry-After": "1"},
            )
        self._count.labels("replayed").inc()
        return Once(stored=held)

    async def _release(self, name: str) -> None:
        try:
            await self.store.release(name)
        except StoreUnavailable:  # the claim then expires by itself
            log.warning("an idempotency claim could not be released (store unavailable)")

    async def erase(self, tenant: str, learner_id: str) -> int:
        """Drop the answers kept for this tenant's learner (``StoreUnavailable`` when the store is down)."""
        return await self.store.erase(learner_key(tenant, learner_id))
