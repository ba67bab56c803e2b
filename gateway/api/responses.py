"""The one response mapping: domain results → response models, errors → ``{"error": {...}}`` bodies
(and the handlers that produce them), and what each route documents it may answer. Shared by the HTTP
and WebSocket routers.

A 500 never carries exception text (it is logged with a request id instead).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.schemas import AuditEntryOut, EmotionResult, ErrorResponse, LearningStateOut, TrendOut
from gateway.core.analysis import Analysis
from gateway.core.history import AuditEntry
from gateway.core.idempotency import REPLAYED_HEADER, Once
from gateway.errors import ErrorCode, GatewayError
from gateway.learning.trajectory import Trend

log = logging.getLogger(__name__)

# ---- domain → response models ---------------------------------------------------------------------


def result(analysis: Analysis, index: int) -> EmotionResult:
    analysed = analysis.results[index]
    s = analysed.state
    return EmotionResult(
        text_index=index,
        result_id=analysis.result_id(index),
        emotions=analysed.prediction.emotions,
        labels=analysed.prediction.emotion_labels,
        learning_signals=analysed.prediction.signals,
        signal_labels=analysed.prediction.signal_labels,
        primary_emotion=analysed.primary_emotion,
        confidence=analysed.confidence,
        cached=analysed.cached,
        learning_state=LearningStateOut(
            learning_emotions=s.learning_emotions,
            valence=s.valence,
            arousal=s.arousal,
            dominance=s.dominance,
            readiness={"state": s.readiness_state, "score": s.readiness_score},
            intervention_level=s.intervention_level,
            risk_score=s.risk_score,
            reasons=s.reasons,
            deviation=s.deviation,
            policy_version=analysis.policy_version,
        ),
    )


def trend(t: Trend) -> TrendOut:
    return TrendOut(label=t.label, slope=t.slope, volatility=t.volatility, points=t.points)


def audit_entry(e: AuditEntry) -> AuditEntryOut:
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


# ---- errors → responses ---------------------------------------------------------------------------


def error_response(
    code: ErrorCode | str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    code = ErrorCode(code)
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=code.status, headers=headers
    )


def describe(errors: Iterable[Any]) -> str:
    """Pydantic errors as one readable sentence: where, and what is wrong."""
    errors = list(errors)
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        if e.get("type") == "json_invalid":
            parts.append("request body is not valid JSON")
        else:
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ErrorCode.INVALID_REQUEST, describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        known = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            413: ErrorCode.PAYLOAD_TOO_LARGE,
        }
        code = known.get(exc.status_code)
        if code is None:
            code = ErrorCode.INVALID_REQUEST if 400 <= exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
        return error_response(code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # only for what fails outside gateway.api.middleware.RequestId, which answers a route's bugs
        request_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error (request id %s)", request_id, exc_info=exc)
        return error_response(ErrorCode.INTERNAL_ERROR, f"internal error; request id {request_id}")


def replayed(once: Once) -> Response:
    """The kept answer to a request sent again with its Idempotency-Key, as it was first sent."""
    assert once.stored is not None
    return Response(
        content=once.stored.body,
        status_code=once.stored.status,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


# ---- what the routes document ---------------------------------------------------------------------

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}
}
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: ("missing or wrong API key (when the gateway has keys)", _WWW_AUTHENTICATE),
    403: ("the API key lacks the scope this route needs (`forbidden`)", {}),
    404: (
        "nothing recorded for this learner under the caller's tenant (`not_found`), or the feature is "
        "disabled on this gateway (`feature_disabled`)",
        {},
    ),
    413: ("request body too large", {}),
    409: (
        "a request with this Idempotency-Key is still running (`request_in_progress`): retry after "
        "Retry-After with the same key",
        _RETRY_AFTER,
    ),
    422: (
        "invalid input: the message says what to fix (`idempotency_key_reused`: the key was sent with "
        "another request)",
        {},
    ),
    429: ("overloaded or rate limited: retry after the Retry-After seconds", _RETRY_AFTER),
    500: ("internal error (logged with the request id the message gives)", {}),
    502: ("the model server returned an error, or an invalid answer (invalid_model_output: not cached)", {}),
    503: (
        "a backend is unavailable or not ready (or its circuit is open): retry after Retry-After",
        _RETRY_AFTER,
    ),
    504: ("the model server did not answer in time: retry after Retry-After", _RETRY_AFTER),
}


def error_responses(*statuses: int, plain_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses: the JSON error body and the headers each carries.
    ``plain_route``: the route's own answer is not JSON (its errors still are), so the body is declared
    by reference (the other routes register ``ErrorResponse`` in the components)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        response: dict[str, Any] = {"description": description}
        if plain_route:
            schema = {"$ref": "#/components/schemas/ErrorResponse"}
            response["content"] = {"application/json": {"schema": schema}}
        else:
            response["model"] = ErrorResponse
        if headers:
            response["headers"] = headers
        out[status] = response
    return out
