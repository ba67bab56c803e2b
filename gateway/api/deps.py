"""What both routers depend on: the app's services, API-key auth (the caller's ``Principal``: tenant,
key id, scopes), the scope a route needs, the per-client rate limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from gateway.core.ratelimit import retry_after_header
from gateway.core.tenants import DEV_PRINCIPAL, Principal, Scope
from gateway.errors import ErrorCode, GatewayError
from gateway.services import Services


def services_of(connection: HTTPConnection) -> Services:
    """The services ``open_services`` built for this app (HTTP requests and WebSockets alike)."""
    services: Services = connection.app.state.services
    return services


async def get_services(connection: HTTPConnection) -> Services:
    """``services_of`` as a dependency. Async although it never waits: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop on every request."""
    return services_of(connection)


ServicesDep = Annotated[Services, Depends(get_services)]


def api_key_from(headers: Mapping[str, str]) -> str:
    """The key in ``X-API-Key`` or ``Authorization: Bearer`` (HTTP requests and WebSocket handshakes)."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given


def authenticate(given: str, services: Services) -> Principal:
    """The caller of key ``given``: the dev principal while auth is off, else the key's tenant and
    scopes; the 401 for a missing or unknown key."""
    if not services.api_keys:
        return DEV_PRINCIPAL
    principal = services.api_keys.authenticate(given) if given else None
    if principal is None:
        raise GatewayError(
            ErrorCode.UNAUTHORIZED,
            "missing or invalid API key: send it in the X-API-Key header",
            {"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_scope(principal: Principal, scope: Scope) -> None:
    """The 403 unless the caller's key carries ``scope``."""
    if not principal.allows(scope):
        raise GatewayError(
            ErrorCode.FORBIDDEN,
            f"this API key (id {principal.key_id}) lacks the '{scope}' scope this route needs; "
            "ask the gateway operator for a key with it",
        )


def client_key(principal: Principal, host: str | None) -> str:
    """Whom the rate limit counts: the key (by its id, never the key) when auth is on, else the client
    address."""
    return f"key:{principal.tenant}/{principal.key_id}" if principal.key_id else f"ip:{host or '-'}"


async def check_rate(services: Services, client: str, tenant: str | None = None) -> None:
    """Count one request for ``client`` and its ``tenant``; raise the 429 (with Retry-After) past either
    limit (gateway/core/ratelimit.py: shared by the replicas when counted in Redis; fails open)."""
    limiter = services.limiter
    if limiter is None:
        return
    refusal = await limiter.check(client, tenant)
    if refusal is not None:
        services.metrics.rate_limited.inc()
        raise GatewayError(
            ErrorCode.OVERLOADED, refusal.message, {"Retry-After": retry_after_header(refusal.retry_after_s)}
        )


def caller(scope: Scope) -> Callable[[Request, Services], Awaitable[Principal]]:
    """The dependency of a route that needs ``scope``: auth (401), the scope (403), then the per-client
    rate limit (429); it returns the caller."""

    async def dependency(request: Request, services: ServicesDep) -> Principal:
        principal = authenticate(api_key_from(request.headers), services)
        require_scope(principal, scope)
        host = request.client.host if request.client else None
        await check_rate(services, client_key(principal, host), principal.tenant)
        return principal

    dependency.__name__ = f"caller_{scope.name.lower()}"
    return dependency


Analyst = Annotated[Principal, Depends(caller(Scope.ANALYSE))]
LearnerReader = Annotated[Principal, Depends(caller(Scope.LEARNERS_READ))]
LearnerEraser = Annotated[Principal, Depends(caller(Scope.LEARNERS_ERASE))]
MetricsReader = Annotated[Principal, Depends(caller(Scope.METRICS))]
PolicyAdmin = Annotated[Principal, Depends(caller(Scope.POLICY_ADMIN))]

__all__ = [
    "Analyst",
    "LearnerEraser",
    "LearnerReader",
    "MetricsReader",
    "PolicyAdmin",
    "Principal",
    "Scope",
    "ServicesDep",
    "api_key_from",
    "authenticate",
    "check_rate",
    "client_key",
    "get_services",
    "require_scope",
]
