"""Plain ASGI middlewares (BaseHTTPMiddleware costs a task per request, on the hot path)."""

from __future__ import annotations

import logging
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.api.responses import error_response
from gateway.errors import ErrorCode
from gateway.services import Services

log = logging.getLogger(__name__)


class HttpMiddleware:
    """A pure ASGI middleware for HTTP requests (``http``); WebSocket and lifespan pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestId(HttpMiddleware):
    """Each HTTP request's id (``gateway.logs``): set for its log lines, answered in ``X-Request-ID``."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope.get("headers", [])).get(logs.HEADER.encode())
        rid = logs.request_id(given.decode("latin-1") if given is not None else None)
        token = logs.current.set(rid)
        started = False

        async def with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (logs.HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        except Exception:
            # A bug: answered here, so that the 500 carries the id too (Starlette's outermost error
            # handler answers after this middleware is gone). No exception text leaves the gateway.
            log.exception("unhandled error (request id %s)", rid)
            if started:
                raise
            message = f"internal error; request id {rid}"
            await error_response(ErrorCode.INTERNAL_ERROR, message)(scope, receive, with_id)
        finally:
            logs.current.reset(token)


class BodyLimit(HttpMiddleware):
    """413 (in the gateway's JSON error format) for bodies over the limit: by Content-Length up front,
    or while a chunked body streams in. Starlette's own limiter answers in plain text."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over {self.max_bytes} bytes; send fewer or shorter texts"
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(ErrorCode.PAYLOAD_TOO_LARGE, message)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException: FastAPI's body reader re-raises it (anything else becomes a 400).
                    raise HTTPException(status_code=413, detail=message)
            return msg

        await self.app(scope, limited, send)


class Timing(HttpMiddleware):
    """``x-total-time`` on every response and request count/latency metrics per route template."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-total-time", f"{elapsed_ms:.3f}".encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            services: Services | None = (
                getattr(scope["app"].state, "services", None) if "app" in scope else None
            )
            if services is not None:
                path = getattr(scope.get("route"), "path", "unmatched")
                services.metrics.requests.labels(path, scope["method"], str(status)).inc()
                services.metrics.latency.labels(path).observe(time.perf_counter() - started)
