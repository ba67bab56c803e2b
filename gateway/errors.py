"""One error type, one status table, one set of handlers.

Every error body is ``{"error": {"code": ..., "message": ...}}``; the message says what to fix.
A 500 never carries exception text (it is logged with a request id instead).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# code -> HTTP status
STATUS = {
    "invalid_request": 422,
    "payload_too_large": 413,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "overloaded": 429,
    "backend_error": 502,
    "invalid_model_output": 502,  # Triton answered with something unusable (never cached or served)
    "backend_unavailable": 503,
    "backend_timeout": 504,
    "internal_error": 500,
}


class GatewayError(Exception):
    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if code not in STATUS:
            raise ValueError(f"unknown error code {code}")
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS[self.code]


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=STATUS[code], headers=headers
    )


def _describe(errors: list[Any]) -> str:
    """Pydantic errors as one readable sentence: where, and what is wrong."""
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
        return error_response("invalid_request", _describe(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        if code is None:
            code = "invalid_request" if 400 <= exc.status_code < 500 else "internal_error"
        return error_response(code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error (request id %s)", request_id, exc_info=exc)
        return error_response("internal_error", f"internal error; request id {request_id}")
