"""Graceful drain: on SIGTERM the gateway first reports not-ready for ``GATEWAY_SHUTDOWN_DRAIN_S`` while it
keeps serving, then stops like uvicorn always does (no new connections, in-flight requests finish).

Why: a load balancer that health-checks ``/readyz`` needs a few probe periods to take a replica out of
rotation; a replica that stops accepting at once resets the connections it is still being sent. During
the drain every response says ``Connection: close``, so keep-alive clients reconnect (to another replica)
instead of reusing this one. A second signal ends the drain at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class Drain:
    """Whether the process is draining: set once, from the signal handler, read by routes and middleware."""

    def __init__(self) -> None:
        self.active = False

    def begin(self) -> None:
        self.active = True


class CloseWhileDraining:
    """``Connection: close`` on every HTTP response while the drain is on."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.active:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, closing_send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its shutdown: the first SIGTERM/SIGINT starts the drain, and
    uvicorn's own exit handling runs when it ends (or at once on a second signal, or when ``drain_s`` is 0).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Drain,
        drain_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self.clock = clock
        self._signal: int | None = None  # the signal that started the drain
        self._stop_at = 0.0
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_s <= 0 or self._signal is not None:
            super().handle_exit(sig, frame)
            return
        # A signal handler: no logging here (it may interrupt a log call holding the handler's lock).
        self._signal = sig
        self._stop_at = self.clock() + self.drain_s
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info("draining for %.0f s: /readyz is 503, requests are still served", self.drain_s)
            if self.clock() >= self._stop_at:
                log.info("drain over; shutting down")
                super().handle_exit(self._signal, None)
        return await super().on_tick(counter)
