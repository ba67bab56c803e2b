"""What both routers depend on: the app's services, API-key auth, the per-client rate limit."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from gateway.core.ratelimit import retry_after_header
from gateway.errors import ErrorCode, GatewayError
from gateway.services import Services


def get_services(connection: HTTPConnection) -> Services:
    """The services ``open_services`` built for this app (HTTP requests and WebSockets alike)."""
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def api_key_from(headers: Mapping[str, str]) -> str:
    """The key in ``X-API-Key`` or ``Authorization: Bearer`` (HTTP requests and WebSocket handshakes)."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given


def check_key(given: str, keys: list[str]) -> None:
    """Raise the 401 unless ``given`` is one of ``keys``."""
    # compare_digest against every key: the time taken does not reveal which key (or prefix) matched
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not ok:
        raise GatewayError(
            ErrorCode.UNAUTHORIZED,
            "missing or invalid API key: send it in the X-API-Key header",
            {"WWW-Authenticate": "Bearer"},
        )


def client_key(services: Services, given_key: str, host: str | None) -> str:
    """Whom the rate limit counts: the API key when auth is on, else the client address."""
    return f"key:{given_key}" if services.api_keys else f"ip:{host or '-'}"


def check_rate(services: Services, client: str) -> None:
    """Count one request for ``client``; raise the 429 (with Retry-After) past the limit."""
    limiter = services.limiter
    if limiter is None:
        return
    wait = limiter.check(client)
    if wait is not None:
        services.metrics.rate_limited.inc()
        raise GatewayError(
            ErrorCode.OVERLOADED,
            f"rate limit of {limiter.limit} requests per minute reached; retry later",
            {"Retry-After": retry_after_header(wait)},
        )


def require_api_key(request: Request, services: ServicesDep) -> None:
    """Auth (when keys are configured), then the per-client rate limit (when set)."""
    given = api_key_from(request.headers)
    if services.api_keys:
        check_key(given, services.api_keys)
    check_rate(services, client_key(services, given, request.client.host if request.client else None))


Protected = [Depends(require_api_key)]
