"""The FastAPI app: ``create_app()`` — the routers, the error handlers, the middlewares, and a lifespan
that opens every service (``gateway.services.open_services``) and closes them at shutdown."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from gateway.api import http, stream
from gateway.api.deps import ServicesDep, api_key_from, authenticate
from gateway.api.middleware import BodyLimit, RequestId, Timing
from gateway.api.responses import install_error_handlers
from gateway.backends.triton import Inference
from gateway.draining import CloseWhileDraining, Drain
from gateway.services import open_services
from gateway.settings import Settings, get_settings

DESCRIPTION = """Emotions (28 GoEmotions labels, multi-label) and a learning-state view for learning
platforms, served by NVIDIA Triton.

Every error is `{"error": {"code": ..., "message": ...}}`; 409, 429, 503 and 504 carry `Retry-After`.
Send an `Idempotency-Key` with a POST to make its retries safe: a retry gets the first answer
(`Idempotent-Replayed: true`), never a second analysis.

**Streaming**: `WS /v1/emotions/stream` (not an OpenAPI operation) takes JSON text frames
`{"id": ..., "text": ..., "learner_id": ..., "context": {...}}` (the single-text form of
`POST /v1/emotions`) and answers each in order with a `result` frame (and a `trajectory` frame when the
learner's trend label changes) or an `error` frame with the status the same error gets over HTTP. Auth
by the API key in the handshake headers or a first frame `{"type": "auth", "api_key": "..."}`."""


def create_app(
    settings: Settings | None = None,
    triton: Inference | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway app. Tests may pass a fake ``triton`` (instead of the gRPC client) and a fake
    monotonic ``clock`` (see ``gateway.services.open_services``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, triton, clock) as services:
            app.state.services = services
            yield

    docs = settings.api_docs == "public"  # else no /docs, /redoc nor public /openapi.json (404)
    app = FastAPI(
        title="GoEmotions gateway",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    install_error_handlers(app)
    app.include_router(http.router)
    if settings.api_docs == "protected":
        _protected_openapi(app)
    app.include_router(stream.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-api-key", "authorization", "idempotency-key"],
            # what a page's script may read: when to retry, and whether an answer is a replay
            expose_headers=[
                "retry-after",
                "idempotent-replayed",
                "x-cache",
                "x-inference-time",
                "x-total-time",
                "x-request-id",
            ],
        )
    app.add_middleware(Timing)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Set by the server on SIGTERM (gateway/draining.py); outside the lifespan, which a signal may precede.
    app.state.drain = Drain()
    app.add_middleware(CloseWhileDraining, drain=app.state.drain)
    app.add_middleware(RequestId)  # outermost: every answer and log line of a request carries its id
    return app


def _protected_openapi(app: FastAPI) -> None:
    """``GATEWAY_API_DOCS=protected``: the OpenAPI document for a valid API key only (any scope; open
    while auth is off), 401 otherwise."""

    async def openapi(request: Request, services: ServicesDep) -> JSONResponse:
        authenticate(api_key_from(request.headers), services)
        return JSONResponse(app.openapi())

    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
