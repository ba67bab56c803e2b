"""A learner's audit trail, page by page (``GET /v1/learners/{id}/history``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.backends.audit.store import AuditEntry, Before
from gateway.backends.audit.writer import AuditTrail
from gateway.errors import ErrorCode, GatewayError

__all__ = ["AuditEntry", "HistoryPage", "read_history", "unknown_learner"]


@dataclass
class HistoryPage:
    entries: list[AuditEntry]  # newest first
    next_before: datetime | None  # the cursor for the next page; None on the last one
    next_before_id: int | None


def unknown_learner(learner_id: str) -> GatewayError:
    """The 404 for a learner with nothing recorded under the caller's tenant. Another tenant's learner of
    that id gets exactly this: whether it exists elsewhere is not revealed."""
    return GatewayError(
        ErrorCode.NOT_FOUND, f"no data recorded for learner {learner_id!r} under this API key's tenant"
    )


async def read_history(
    trail: AuditTrail | None,
    tenant: str,
    learner_id: str,
    limit: int,
    before: datetime | None,
    before_id: int | None,
) -> HistoryPage:
    """One page of a tenant's learner's audit rows, newest first, and the cursor for the next page. A 404
    (``feature_disabled``) when the audit trail is off: a feature turned off is not an outage; a 404
    (``not_found``) for a learner without rows (the first page is empty)."""
    if trail is None:
        raise GatewayError(
            ErrorCode.FEATURE_DISABLED,
            "the audit trail is disabled on this gateway (GATEWAY_AUDIT_BACKEND=off), so no learner "
            "history is recorded; the operator can enable it with GATEWAY_AUDIT_BACKEND=sqlite or postgres",
        )
    if before_id is not None and before is None:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, "before_id needs before: pass both from the previous page"
        )
    cursor = None
    if before is not None:
        try:
            cursor = Before(before.astimezone(UTC), before_id)
        except (OverflowError, ValueError):
            raise GatewayError(ErrorCode.INVALID_REQUEST, "before: not a representable UTC time") from None
    entries = await trail.history(tenant, learner_id, limit, cursor)
    if not entries and cursor is None:
        raise unknown_learner(learner_id)
    last = entries[-1] if len(entries) == limit else None
    return HistoryPage(entries, last.ts if last else None, last.id if last else None)
