"""The one failure policy every backend sits behind: a circuit breaker with a growing cool-down.

closed → (``failure_threshold`` failures in a row) → open: calls are refused at once (no waiting on a
backend that is down) → (the cool-down later) → half-open: one probe call goes through, the others are
still refused → the probe succeeds: closed; it fails: open again, for twice the last cool-down (up to
``max_reset_s``; equal to ``reset_s`` by default, a constant cool-down).

Every admitted call gets an ``Admission``: the breaker's epoch (bumped on every change of state) and
whether it is the probe. An outcome reported with an admission from an earlier epoch is stale and
ignored: a slow call let in while the circuit was closed that fails (or succeeds) while it is half-open
must not re-open (or close) it in the probe's name; only the probe's own outcome decides.

Triton (``backends.triton.GuardedInference``), the Redis result cache and learner store
(``backends.cache.GuardedCache``, ``backends.trajectory.GuardedTrajectoryStore``) and the audit writer
(``backends.audit.writer``) each own one; only what the backend's own failures are decides (its caller
says which errors count). The clock is injected, so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from gateway.errors import ErrorCode, GatewayError

log = logging.getLogger(__name__)

T = TypeVar("T")
B = TypeVar("B")  # the guarded backend


class State(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """``closed``, ``half-open`` or ``open`` (as /readyz reports it)."""
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Admission:
    """One call let through: the breaker's epoch when it was admitted, and whether it is the probe."""

    epoch: int
    probe: bool = False


class CircuitOpen(GatewayError):
    """A call refused because its backend's circuit is open (503, with the cool-down's Retry-After)."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"{what} is failing; requests are paused for a moment (circuit open), retry later",
            {"Retry-After": str(retry_after_s)},
        )


class Breaker:
    def __init__(
        self,
        what: str,
        failure_threshold: int = 1,
        reset_s: float = 5.0,
        max_reset_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_s <= 0 or (max_reset_s is not None and max_reset_s < reset_s):
            raise ValueError("failure_threshold must be >= 1, reset_s > 0 and max_reset_s >= reset_s")
        self.what = what  # "the model server", "the Redis cache", ...: for messages and logs
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.max_reset_s = max_reset_s if max_reset_s is not None else reset_s
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._cool_down_s = reset_s
        self._opened_at = 0.0
        self._probing = False
        self._epoch = 0  # bumped on every change of state: outcomes of older admissions are stale

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._cool_down_s:
            self._set(State.HALF_OPEN)
        return self._state

    @property
    def cool_down_s(self) -> float:
        """The current (or, when closed, the next) cool-down."""
        return self._cool_down_s

    def wait_s(self) -> float:
        """Seconds until a call may go through again (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._cool_down_s - (self._clock() - self._opened_at))

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._cool_down_s - (self._clock() - self._opened_at)))

    def allow(self) -> Admission | None:
        """An admission when a call may go through now (when half-open: this call is the probe), else
        None. Report the call's outcome with it (``success``, ``failure``, ``release``)."""
        state = self.state
        if state is State.CLOSED:
            return Admission(self._epoch)
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True  # this call is the probe; the others wait for its verdict
            return Admission(self._epoch, probe=True)
        return None

    def acquire(self) -> Admission:
        """Let a call through, or raise the ``CircuitOpen`` (503) an open circuit answers with."""
        admission = self.allow()
        if admission is None:
            raise CircuitOpen(self.what, self.retry_after_s())
        return admission

    def _stale(self, admission: Admission | None) -> bool:
        """Whether an outcome belongs to a call admitted before the circuit last changed state (then it
        decides nothing). Without an admission (a caller that runs one call at a time, such as the audit
        writer) the outcome is the current one's."""
        if admission is None or admission.epoch == self._epoch:
            return False
        log.debug("an outcome of a call admitted before %s's circuit changed state is ignored", self.what)
        return True

    def success(self, admission: Admission | None = None) -> None:
        if self._stale(admission):
            return
        self._failures = 0
        self._probing = False
        self._cool_down_s = self.reset_s
        if self._state is not State.CLOSED:
            log.info("circuit closed: %s answers again", self.what)
            self._set(State.CLOSED)

    def failure(self, admission: Admission | None = None) -> None:
        if self._stale(admission):
            return
        self._failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe:
            self._open(min(self._cool_down_s * 2, self.max_reset_s))
        elif self._state is State.CLOSED and self._failures >= self.failure_threshold:
            self._open(self.reset_s)

    def release(self, admission: Admission | None = None) -> None:
        """A call that proved nothing (the client's bad input, a cancelled call): free the probe slot
        (only the probe's own admission frees it)."""
        if self._stale(admission) or (admission is not None and not admission.probe):
            return
        self._probing = False

    async def call(self, fn: Callable[[], Awaitable[T]], is_fault: Callable[[Exception], bool]) -> T:
        """``fn()`` through the breaker: refused with ``CircuitOpen`` while open; an exception for which
        ``is_fault`` is true counts as a failure, anything else (or a cancellation) proves nothing."""
        admission = self.acquire()
        try:
            result = await fn()
        except Exception as exc:
            if is_fault(exc):
                self.failure(admission)
            else:
                self.release(admission)
            raise
        except BaseException:
            self.release(admission)
            raise
        self.success(admission)
        return result

    def _open(self, cool_down_s: float) -> None:
        log.warning(
            "circuit open for %.1f s after %d failed calls to %s", cool_down_s, self._failures, self.what
        )
        self._cool_down_s = cool_down_s
        self._opened_at = self._clock()
        self._set(State.OPEN)

    def _set(self, state: State) -> None:
        self._state = state
        self._epoch += 1
        if self._on_change is not None:
            self._on_change(state)


class Guarded(Generic[B]):
    """A backend behind its breaker: ``guard(fn)`` runs ``fn`` through the breaker and raises ``CircuitOpen``
    or the backend's own outage error (one of ``errors``), which the subclass maps to what its callers
    get (a miss, ``StoreUnavailable``). A fault is logged with ``consequence`` and counted (``on_error``)."""

    consequence = "answering without it"

    def __init__(
        self,
        inner: B,
        breaker: Breaker,
        errors: tuple[type[Exception], ...],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.breaker = breaker
        self._faults = errors  # the backend's outage errors
        self.unavailable: tuple[type[Exception], ...] = (CircuitOpen, *errors)
        self._on_error = on_error or (lambda: None)

    def _is_fault(self, exc: Exception) -> bool:
        if not isinstance(exc, self._faults):
            return False
        log.warning("%s is unavailable (%s); %s", self.breaker.what, type(exc).__name__, self.consequence)
        self._on_error()
        return True

    async def guard(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await self.breaker.call(fn, self._is_fault)
