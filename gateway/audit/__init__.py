"""The optional audit trail: one row per analysed text (who, when, which model, what was decided, how
fast), in SQLite or PostgreSQL, written off the request path.

``from_settings`` builds it (or returns None when ``GATEWAY_AUDIT_BACKEND=off``); ``record_outcome`` is
what a route calls after ``analyse``; ``read_history`` answers ``GET /v1/learners/{id}/history``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.audit.store import AuditEntry, AuditRow, Before, PostgresStore, SqliteStore
from gateway.audit.writer import AuditTrail
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.schemas import AuditEntryOut, HistoryResponse
from gateway.settings import Settings

if TYPE_CHECKING:  # gateway.service imports this package's types for Core
    from gateway.service import Core, Outcome

__all__ = ["AuditEntry", "AuditRow", "AuditTrail", "from_settings", "read_history", "record_outcome"]

log = logging.getLogger(__name__)

# HMAC keys shorter than this are guessable; a hex-encoded 128-bit secret is 32 characters.
MIN_HASH_KEY_CHARS = 16


def from_settings(settings: Settings, metrics: Metrics) -> AuditTrail | None:
    """The configured audit trail, or None when it is off. Raises ValueError on an unusable setup."""
    if settings.audit_backend == "off":
        return None
    key = settings.audit_hash_key.get_secret_value() if settings.audit_hash_key else ""
    if not key and not settings.audit_store_text:
        # A random per-process key would make hashes incomparable across restarts and replicas, and
        # an unkeyed hash of a short text is reversed by hashing guesses: refuse instead.
        raise ValueError(
            "GATEWAY_AUDIT_HASH_KEY is required when the audit trail is on and GATEWAY_AUDIT_STORE_TEXT "
            "is false (texts are recorded as HMAC-SHA256 hashes); set a random secret, e.g. "
            "`openssl rand -hex 32`"
        )
    if key and len(key) < MIN_HASH_KEY_CHARS:
        raise ValueError(f"GATEWAY_AUDIT_HASH_KEY is too short; use at least {MIN_HASH_KEY_CHARS} characters")
    store: SqliteStore | PostgresStore
    if settings.audit_backend == "sqlite":
        store = SqliteStore(settings.audit_sqlite_path)
    else:
        if settings.audit_dsn is None or not settings.audit_dsn.get_secret_value():
            raise ValueError(
                "GATEWAY_AUDIT_DSN (a postgresql:// URI) is required when GATEWAY_AUDIT_BACKEND=postgres"
            )
        store = PostgresStore(settings.audit_dsn.get_secret_value())
    return AuditTrail(
        store,
        metrics,
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_interval_s=settings.audit_flush_interval_s,
        retention_days=settings.audit_retention_days,
        store_text=settings.audit_store_text,
        hash_key=key.encode() if key else None,
    )


def record_outcome(
    core: Core,
    outcome: Outcome,
    learner_id: str | None,
    texts: list[str],
    latency_s: float,
    channel: str = "http",
) -> None:
    """Queue one audit row per text of an answered request (``texts[i]`` ↔ ``outcome.results[i]``).

    Does nothing when the audit trail is off; never waits and never raises, so it cannot slow or fail
    the request that calls it.
    """
    audit = core.audit
    if audit is None:
        return
    try:
        if len(texts) != len(outcome.results):
            raise ValueError(f"{len(texts)} texts for {len(outcome.results)} results")
        ts = datetime.now(UTC)
        request_id = uuid.uuid4().hex
        rows = []
        for index, (text, scored) in enumerate(zip(texts, outcome.results, strict=True)):
            text_hash, stored_text = audit.text_fields(text)
            state = scored.state
            rows.append(
                AuditRow(
                    ts=ts,
                    learner_id=learner_id,
                    request_id=request_id,
                    text_index=index,
                    channel=channel,
                    model_version=scored.prediction.model_version,
                    labels=list(scored.prediction.labels),
                    primary_emotion=scored.primary_emotion,
                    confidence=float(scored.confidence),
                    readiness_state=state.readiness_state,
                    readiness_score=float(state.readiness_score),
                    valence=float(state.valence),
                    intervention_level=state.intervention_level,
                    reasons=list(state.reasons),
                    latency_ms=latency_s * 1000,
                    cached=scored.cached,
                    text_hash=text_hash,
                    text=stored_text,
                )
            )
    except Exception:
        log.exception("audit trail: could not build the audit rows; request answered, rows dropped")
        core.metrics.audit_dropped.labels("internal").inc(max(len(texts), 1))
        return
    audit.submit(rows)


async def read_history(
    core: Core, learner_id: str, limit: int, before: datetime | None, before_id: int | None
) -> HistoryResponse:
    """One page of a learner's audit rows, newest first, and the cursor for the next page."""
    if core.audit is None:
        raise GatewayError(
            "backend_unavailable",
            "the audit trail is disabled on this gateway (GATEWAY_AUDIT_BACKEND=off), so no learner "
            "history is recorded; the operator can enable it with GATEWAY_AUDIT_BACKEND=sqlite or postgres",
        )
    if before_id is not None and before is None:
        raise GatewayError("invalid_request", "before_id needs before: pass both from the previous page")
    cursor = None
    if before is not None:
        try:
            cursor = Before(before.astimezone(UTC), before_id)
        except (OverflowError, ValueError):
            raise GatewayError("invalid_request", "before: not a representable UTC time") from None
    entries = await core.audit.history(learner_id, limit, cursor)
    last = entries[-1] if len(entries) == limit else None
    return HistoryResponse(
        learner_id=learner_id,
        entries=[_entry(e) for e in entries],
        next_before=last.ts if last else None,
        next_before_id=last.id if last else None,
    )


def _entry(e: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=e.id,
        timestamp=e.ts,
        request_id=e.request_id,
        text_index=e.text_index,
        channel=e.channel,
        model_version=e.model_version,
        labels=e.labels,
        primary_emotion=e.primary_emotion,
        confidence=e.confidence,
        readiness_state=e.readiness_state,
        readiness_score=e.readiness_score,
        valence=e.valence,
        intervention_level=e.intervention_level,
        reasons=e.reasons,
        latency_ms=e.latency_ms,
        cached=e.cached,
        text_hash=e.text_hash,
        text=e.text,
    )
