"""Circuit breaker around the Triton client: after repeated failures, answer 503 at once instead of
sending every request into a server that is down (each would wait for its deadline and hold a slot).

closed → (``failure_threshold`` failures in a row) → open: immediate 503 with ``Retry-After``, no calls
→ (``reset_timeout_s`` later) → half-open: one probe call goes through, the rest still get 503
→ probe succeeds: closed; probe fails: open again for another cool-down.

Only the server's failures count (unavailable, timeout, server error); a client's bad input is not a
sign that Triton is unwell, and neither is an invalid answer (``invalid_model_output``: Triton answered,
that request fails on its own, and an open circuit would only turn every other text away too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from enum import Enum

from gateway.errors import GatewayError
from gateway.triton import Inference, Prediction

log = logging.getLogger(__name__)

SERVER_FAULTS = frozenset({"backend_unavailable", "backend_timeout", "backend_error"})


class State(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._set(State.HALF_OPEN)
        return self._state

    def retry_after_s(self) -> int:
        left = self.reset_timeout_s - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    def acquire(self) -> None:
        """Let a call through, or raise the 503 an open circuit answers with."""
        state = self.state
        if state is State.CLOSED:
            return
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True  # this call is the probe; the others wait for its verdict
            return
        raise GatewayError(
            "backend_unavailable",
            "the model server is failing; requests are paused for a moment (circuit open), retry later",
            {"Retry-After": str(self.retry_after_s())},
        )

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state is not State.CLOSED:
            log.info("circuit closed: the model server answers again")
            self._set(State.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe or (self._state is State.CLOSED and self._failures >= self.failure_threshold):
            log.warning(
                "circuit open for %.1f s after %d failed Triton calls", self.reset_timeout_s, self._failures
            )
            self._opened_at = self._clock()
            self._set(State.OPEN)

    def release(self) -> None:
        """A call that proved nothing (the client's bad input): free the probe slot, keep the state."""
        self._probing = False

    def _set(self, state: State) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)


class BreakerInference:
    """An ``Inference`` that goes through a circuit breaker; wraps the real Triton client (or a fake)."""

    def __init__(self, inner: Inference, breaker: CircuitBreaker, on_reject: Callable[[], None]) -> None:
        self.inner = inner
        self.breaker = breaker
        self._on_reject = on_reject

    async def infer(self, texts: list[str]) -> list[Prediction]:
        try:
            self.breaker.acquire()
        except GatewayError:
            self._on_reject()
            raise
        try:
            result = await self.inner.infer(texts)
        except GatewayError as exc:
            if exc.code in SERVER_FAULTS:
                self.breaker.failure()
            else:
                self.breaker.release()
            raise
        except BaseException:
            self.breaker.release()  # cancelled by the caller: says nothing about Triton
            raise
        self.breaker.success()
        return result

    async def ready(self) -> bool:
        """Ready when Triton is and the circuit is closed. After the cool-down a ready Triton closes
        the circuit too: an orchestrator sends a not-ready replica no traffic, so waiting for a request
        to probe would keep it out forever."""
        ok = await self.inner.ready()
        if ok and self.breaker.state is State.HALF_OPEN:
            self.breaker.success()
        return ok and self.breaker.state is State.CLOSED

    async def close(self) -> None:
        await self.inner.close()
