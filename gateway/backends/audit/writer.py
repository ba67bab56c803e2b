"""The buffered audit writer: the request path only queues rows, a background task writes them.

``submit`` never waits and never raises: a full queue drops the rows (``queue_full``). The writer task
takes up to ``batch_size`` rows, waiting at most ``flush_interval_s`` for a batch to fill, and writes
them in one transaction. A failed write drops that batch (``db_error``), logs once per outage and opens
the writer's breaker (``gateway.resilience``: 1 s doubling to 30 s); rows queue meanwhile, up to the
bound. Shutdown writes what is queued,
within ``SHUTDOWN_S``; the rest is dropped (``shutdown``). Every store call runs on one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

from contract.text import normalize
from gateway.backends.audit.store import (
    DB_ERRORS,
    AuditEntry,
    AuditRow,
    AuditStore,
    Before,
    Erasure,
    Outcome,
)
from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.resilience import Breaker

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
SHUTDOWN_S = 5.0
RETENTION_EVERY_S = 3600.0

T = TypeVar("T")


class AuditTrail:
    """Queue, writer task, retention task and history reads over one ``AuditStore``."""

    def __init__(
        self,
        store: AuditStore,
        metrics: Metrics,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        retention_days: int = 90,
        store_text: bool = False,
        hash_key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hash_key is None and not store_text:
            raise ValueError("an audit trail needs a hash key unless it stores the texts themselves")
        self.store = store
        self.metrics = metrics
        self.queue: asyncio.Queue[AuditRow] = asyncio.Queue(maxsize=queue_size)
        # (tenant, request id, text index) of the rows in the queue: an outcome flushes only for its own row
        self._queued: Counter[tuple[str, str, int]] = Counter()
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retention_days = retention_days
        self.store_text = store_text
        self._hash_key = hash_key
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-db")
        self._wake = asyncio.Event()  # a first row arrived (while idle) or a full batch is queued
        self._taken = asyncio.Event()  # set (and replaced) each time rows are taken for a batch
        self._stop = asyncio.Event()
        self._idle = True
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._clock = clock
        self.breaker = Breaker(
            "the audit database", reset_s=BACKOFF_MIN_S, max_reset_s=BACKOFF_MAX_S, clock=clock
        )
        self._down_since: float | None = None
        self._dropped_while_down = 0
        metrics.audit_queue_depth.set_function(self.queue.qsize)

    def __repr__(self) -> str:
        return f"AuditTrail({self.store.dialect}, store_text={self.store_text})"  # never the key

    # --- the request path -----------------------------------------------------------------------

    def text_fields(self, text: str) -> tuple[str | None, str | None]:
        """(keyed hash, text) to record for one text: the text itself only when store_text is on."""
        normalized = normalize(text)
        digest = (
            hmac.new(self._hash_key, normalized.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            if self._hash_key is not None
            else None
        )
        return digest, normalized if self.store_text else None

    def submit(self, rows: Sequence[AuditRow]) -> None:
        """Queue rows for writing; never waits. Whatever does not fit is dropped and counted."""
        for i, row in enumerate(rows):
            try:
                self._put(row)
            except asyncio.QueueFull:
                self.metrics.audit_dropped.labels("queue_full").inc(len(rows) - i)
                break
        if self._idle or self.queue.qsize() >= self.batch_size:
            self._wake.set()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        self._retention = asyncio.create_task(self._retention_loop())

    async def stop(self) -> None:
        """Write what is queued (within ``SHUTDOWN_S``), drop the rest, close the database."""
        self._stop.set()
        self._wake.set()
        if self._retention is not None:
            self._retention.cancel()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, SHUTDOWN_S)
            except TimeoutError:
                pass  # what is still queued is counted below
            except Exception:
                log.exception("audit writer failed")
        left = self._take(self.queue.qsize())
        if left:
            self.metrics.audit_dropped.labels("shutdown").inc(len(left))
            log.warning("audit trail: %d rows not written at shutdown", len(left))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(self.store.close), SHUTDOWN_S)
        self._executor.shutdown(wait=False)

    # --- writing --------------------------------------------------------------------------------

    async def flush(self, force: bool = False) -> int:
        """Write everything queued now, batch by batch; stop at the first failed batch, or when the
        breaker refuses (unless ``force``: the last try at shutdown). Rows written."""
        written = 0
        while not self.queue.empty():
            if not self.breaker.allow() and not force:
                break
            batch = self._take(self.batch_size)
            if not await self._write(batch):
                break
            written += len(batch)
        return written

    async def _write_loop(self) -> None:
        while True:
            await self._batch_ready()
            wait = self.breaker.wait_s()
            if wait > 0 and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
            if self._stop.is_set():
                break
            await self.flush()
        await self.flush(force=True)  # shutdown: one more try, even during an outage

    async def _batch_ready(self) -> None:
        """Return once rows are queued and the batch is full or ``flush_interval_s`` has passed."""
        while self.queue.empty() and not self._stop.is_set():
            self._idle = True
            self._wake.clear()
            await self._wake.wait()
        self._idle = False
        if self.queue.qsize() < self.batch_size and not self._stop.is_set():
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)

    def _put(self, row: AuditRow) -> None:
        self.queue.put_nowait(row)
        self._queued[_link(row)] += 1

    def _take(self, n: int) -> list[AuditRow]:
        rows: list[AuditRow] = []
        while len(rows) < n and not self.queue.empty():
            row = self.queue.get_nowait()
            rows.append(row)
            key = _link(row)
            self._queued[key] -= 1
            if self._queued[key] <= 0:
                del self._queued[key]
        if rows:
            taken, self._taken = self._taken, asyncio.Event()
            taken.set()
        return rows

    async def _until_taken(self, key: tuple[str, str, int]) -> None:
        """Wait until the running writer takes ``key``'s row for a batch (its interval, plus a margin)."""
        if self._writer is None or self._writer.done():
            return
        loop = asyncio.get_running_loop()  # real time: the writer's interval is real time too
        deadline = loop.time() + 2 * self.flush_interval_s
        while key in self._queued and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), left)

    async def _write(self, rows: list[AuditRow]) -> bool:
        try:
            await self._call(self.store.insert, rows)
        except Exception as exc:  # the writer must outlive anything a write raises
            self.metrics.audit_dropped.labels("db_error").inc(len(rows))
            self._dropped_while_down += len(rows)
            self._failed(exc)
            return False
        self.metrics.audit_written.inc(len(rows))
        self._recovered()
        return True

    def _failed(self, exc: Exception) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            if isinstance(exc, DB_ERRORS):
                log.warning(
                    "audit database unavailable (%s: %s); dropping audit rows until it is back",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                )
            else:
                log.exception("audit trail write failed unexpectedly", exc_info=exc)
        self.breaker.failure()

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "audit database back after %.0f s; %d audit rows were dropped meanwhile",
                self._clock() - self._down_since,
                self._dropped_while_down,
            )
        self._down_since = None
        self._dropped_while_down = 0
        self.breaker.success()

    # --- retention and reads --------------------------------------------------------------------

    async def apply_retention(self, now: datetime | None = None) -> int:
        """Delete rows older than ``retention_days`` (0 keeps everything). Rows deleted."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        deleted = await self._call(self.store.delete_before, cutoff)
        self.metrics.audit_deleted.inc(deleted)
        if deleted:
            log.info("audit retention: deleted %d rows older than %s", deleted, cutoff.isoformat())
        return deleted

    async def _retention_loop(self) -> None:
        first = True
        while True:
            try:
                if first:
                    await self._call(self.store.open)  # connect and migrate at start-up, not on a request
                    self._recovered()
                    first = False
                await self.apply_retention()
            except Exception as exc:
                self._failed(exc)
            await asyncio.sleep(RETENTION_EVERY_S if not first else max(self.breaker.wait_s(), BACKOFF_MIN_S))

    async def history(
        self, tenant: str, learner_id: str, limit: int, before: Before | None
    ) -> list[AuditEntry]:
        """A tenant's learner's rows, newest first. Queued rows are written first, so a client reads its
        writes."""
        await self.flush()  # unless the breaker is open: then the read does not wait for a write
        try:
            return await self._call(self.store.history, tenant, learner_id, limit, before)
        except DB_ERRORS as exc:
            log.warning("audit history read failed (%s)", type(exc).__name__)
            raise self._unavailable() from None

    async def record_outcome(self, outcome: Outcome) -> int | None:
        """Store an outcome linked to its audit row: its id, or None when the tenant's learner has no such
        row. When its row is still queued (a result answered a moment ago), the outcome waits for the
        writer's next batch (at most ``flush_interval_s``) rather than forcing one: a platform posting
        outcomes right after each answer must not turn batching into one transaction a text. Rows already
        handed to the database thread are written before this lookup runs there (one thread, in order).
        A 503 when the row cannot be written now (the database is down)."""
        key = (outcome.tenant, outcome.request_id, outcome.text_index)
        if key in self._queued:
            await self._until_taken(key)
        if key in self._queued:
            await self.flush()  # no writer running (or it is late): write the queue now
        if key in self._queued:
            raise self._unavailable()  # the breaker refused the write: the row is not in the database
        try:
            return await self._call(self.store.record_outcome, outcome)
        except DB_ERRORS as exc:
            log.warning("audit outcome write failed (%s)", type(exc).__name__)
            raise self._unavailable() from None

    def learner_hash(self, tenant: str, learner_id: str) -> str | None:
        """What the erasure record keeps of the learner: a keyed hash (None without a hash key)."""
        if self._hash_key is None:
            return None
        return hmac.new(self._hash_key, f"{tenant}:{learner_id}".encode(), hashlib.sha256).hexdigest()

    async def erase(self, tenant: str, learner_id: str, key_id: str | None, trajectory_points: int) -> int:
        """Remove a tenant's learner: its queued rows (never written now) and its stored rows, and record
        the erasure (without the learner id) in the same transaction. The rows removed; a 503 while the
        database is unavailable (nothing is deleted then: the caller retries)."""
        queued = self._purge(tenant, learner_id)
        erasure = Erasure(
            datetime.now(UTC),
            tenant,
            self.learner_hash(tenant, learner_id),
            key_id,
            trajectory_points,
            queued,
        )
        try:
            stored = await self._call(self.store.erase_learner, tenant, learner_id, erasure)
        except DB_ERRORS as exc:
            log.warning("audit erasure failed (%s)", type(exc).__name__)
            raise self._unavailable() from None
        return queued + stored

    def _purge(self, tenant: str, learner_id: str) -> int:
        """Drop the learner's rows still waiting in the queue (no await: nothing is queued meanwhile)."""
        queued = self._take(self.queue.qsize())
        kept = [r for r in queued if (r.tenant, r.learner_id) != (tenant, learner_id)]
        for r in kept:
            self._put(r)
        return len(queued) - len(kept)

    def _unavailable(self) -> GatewayError:
        return GatewayError(
            ErrorCode.BACKEND_UNAVAILABLE,
            "the audit database is unavailable; retry later",
            {"Retry-After": str(max(1, math.ceil(self.breaker.wait_s())))},
        )

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))


def _link(row: AuditRow) -> tuple[str, str, int]:
    return row.tenant, row.request_id, row.text_index
