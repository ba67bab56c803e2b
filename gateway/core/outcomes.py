"""Outcome feedback (``POST /v1/outcomes``): what happened after an analysed text, linked to that text's
audit row (which keeps the features and the policy version that decided), for fitting a policy later.
Scoped like every learner route: a tenant links only its own learners' results."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway.backends.audit.store import OUTCOMES, Outcome, OutcomeName
from gateway.backends.audit.writer import AuditTrail
from gateway.errors import ErrorCode, GatewayError

__all__ = ["OUTCOMES", "RESULT_ID_PATTERN", "OutcomeName", "report_outcome"]

# "<request id>-<text index>", as every result carries it (Analysis.result_id)
RESULT_ID_PATTERN = r"^[0-9a-f]{32}-[0-9]{1,4}$"
_RESULT_ID = re.compile(RESULT_ID_PATTERN)


async def report_outcome(
    trail: AuditTrail | None,
    tenant: str,
    learner_id: str,
    result_id: str,
    outcome: str,
    label: str | None,
    key_id: str | None,
) -> int:
    """Store the outcome; its id. 404 ``feature_disabled`` without an audit trail (nothing to link to),
    404 ``not_found`` when the tenant's learner has no such result (also another tenant's), 503 while
    the audit database is unavailable."""
    if trail is None:
        raise GatewayError(
            ErrorCode.FEATURE_DISABLED,
            "outcomes link to audit rows, and the audit trail is disabled on this gateway "
            "(GATEWAY_AUDIT_BACKEND=off); the operator can enable it with GATEWAY_AUDIT_BACKEND=sqlite "
            "or postgres",
        )
    if not _RESULT_ID.match(result_id) or outcome not in OUTCOMES:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "result_id or outcome is malformed")
    request_id, index = result_id.rsplit("-", 1)
    stored = await trail.record_outcome(
        Outcome(datetime.now(UTC), tenant, learner_id, request_id, int(index), outcome, label, key_id)
    )
    if stored is None:
        raise GatewayError(
            ErrorCode.NOT_FOUND,
            f"no result {result_id!r} recorded for learner {learner_id!r} under this API key's tenant "
            "(results are linkable once answered with that learner_id and the audit trail on)",
        )
    return stored
