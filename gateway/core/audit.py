"""Audit rows for an answered analysis: one per text, queued on the audit trail (never waits, never
raises: it cannot slow or fail the request it records)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.backends.audit.store import AuditRow
from gateway.backends.audit.writer import AuditTrail
from gateway.core.analysis import Analysis
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


def record(
    trail: AuditTrail,
    metrics: Metrics,
    analysis: Analysis,
    learner_id: str | None,
    texts: Sequence[str],
    latency_s: float,
    channel: str,
    tenant: str,
) -> None:
    """Queue one audit row per text (``texts[i]`` ↔ ``analysis.results[i]``)."""
    try:
        if len(texts) != len(analysis.results):
            raise ValueError(f"{len(texts)} texts for {len(analysis.results)} results")
        ts = datetime.now(UTC)
        request_id = analysis.request_id or uuid.uuid4().hex
        trend = analysis.trend.label if analysis.trend else None
        rows = []
        for index, (text, result) in enumerate(zip(texts, analysis.results, strict=True)):
            text_hash, stored_text = trail.text_fields(text)
            state = result.state
            rows.append(
                AuditRow(
                    ts=ts,
                    learner_id=learner_id,
                    request_id=request_id,
                    text_index=index,
                    channel=channel,
                    model_version=result.prediction.model_version,
                    labels=list(result.prediction.labels),
                    primary_emotion=result.primary_emotion,
                    confidence=float(result.confidence),
                    readiness_state=state.readiness_state,
                    readiness_score=float(state.readiness_score),
                    valence=float(state.valence),
                    intervention_level=state.intervention_level,
                    reasons=list(state.reasons),
                    latency_ms=latency_s * 1000,
                    cached=result.cached,
                    text_hash=text_hash,
                    text=stored_text,
                    tenant=tenant,
                    features=state.features(analysis.context, trend),
                    policy_version=analysis.policy_version or None,
                )
            )
    except Exception:
        log.exception("audit trail: could not build the audit rows; request answered, rows dropped")
        metrics.audit_dropped.labels("internal").inc(max(len(texts), 1))
        return
    trail.submit(rows)
