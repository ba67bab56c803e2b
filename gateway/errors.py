"""Error codes as an enum, one status table, one error type: what every layer raises and both routers
(HTTP and WebSocket) answer with. No web framework here (backends raise these too); the API layer turns
them into ``{"error": {"code": ..., "message": ...}}`` bodies (``gateway.api.responses``)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"  # a valid key without the scope the route needs
    NOT_FOUND = "not_found"
    FEATURE_DISABLED = "feature_disabled"  # the route exists, but its feature is off on this gateway
    METHOD_NOT_ALLOWED = "method_not_allowed"
    OVERLOADED = "overloaded"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # an Idempotency-Key sent with another request
    REQUEST_IN_PROGRESS = "request_in_progress"  # the first request with this Idempotency-Key is running
    BACKEND_ERROR = "backend_error"
    INVALID_MODEL_OUTPUT = "invalid_model_output"  # Triton answered with something unusable (never cached)
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_TIMEOUT = "backend_timeout"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        return STATUS[self]


# code -> HTTP status (a stream error frame carries the same status)
STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FEATURE_DISABLED: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.REQUEST_IN_PROGRESS: 409,
    ErrorCode.BACKEND_ERROR: 502,
    ErrorCode.INVALID_MODEL_OUTPUT: 502,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.BACKEND_TIMEOUT: 504,
    ErrorCode.INTERNAL_ERROR: 500,
}


class GatewayError(Exception):
    """A failure with a code from the table and a message that says what to fix (or when to retry)."""

    def __init__(self, code: ErrorCode | str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        try:
            self.code = ErrorCode(code)
        except ValueError:
            raise ValueError(f"unknown error code {code}") from None
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.code.status
