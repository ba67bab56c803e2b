"""Async Triton gRPC client for the goemotions ensemble: one call per request batch, a deadline per call,
failover across endpoints, every answer checked before anyone uses it, and Triton's failures translated
into the gateway's error table. ``GuardedInference`` puts a client behind the circuit breaker."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from contract.names import (
    ENSEMBLE,
    GOEMOTIONS_LABELS,
    LABELS,
    LEARNING_SIGNALS,
    MODEL_VERSION,
    OUTPUT_LABELS,
    PROBABILITIES,
    TEXT,
    output_labels,
)
from gateway.errors import ErrorCode, GatewayError
from gateway.resilience import Breaker, CircuitOpen, State

log = logging.getLogger(__name__)

# gRPC status -> gateway error code. Triton's "queue full" rejection is RESOURCE_EXHAUSTED (overload)
# or UNAVAILABLE depending on version: both mean "try again shortly", never the client's fault.
_STATUS_TO_CODE: dict[str, ErrorCode] = {
    "StatusCode.INVALID_ARGUMENT": ErrorCode.INVALID_REQUEST,
    "StatusCode.DEADLINE_EXCEEDED": ErrorCode.BACKEND_TIMEOUT,
    "StatusCode.UNAVAILABLE": ErrorCode.BACKEND_UNAVAILABLE,
    "StatusCode.RESOURCE_EXHAUSTED": ErrorCode.BACKEND_UNAVAILABLE,
    "StatusCode.NOT_FOUND": ErrorCode.BACKEND_UNAVAILABLE,  # model not loaded
    "StatusCode.CANCELLED": ErrorCode.BACKEND_UNAVAILABLE,
}
# The failures another endpoint may not have: this one is down, shutting down (a blue/green swap drains
# it) or has not loaded the model. The same call is tried once on each other endpoint.
FAILOVER_STATUSES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"})

WIDTHS = tuple(len(labels) for labels in OUTPUT_LABELS)  # 28, or 28 + the learning signals
_EMOTIONS = frozenset(GOEMOTIONS_LABELS)
_SIGNALS = frozenset(LEARNING_SIGNALS)


@dataclass(frozen=True)
class Prediction:
    """Model output for one text: one probability per output label (``contract.names.output_labels``:
    the 28 GoEmotions labels, then the learning signals when the model has them), the labels at or over
    their tuned thresholds (applied by Triton), and the version of the model that produced this row
    (Triton's MODEL_VERSION)."""

    probabilities: list[float]
    labels: list[str]
    model_version: str

    @property
    def by_label(self) -> dict[str, float]:
        return dict(zip(output_labels(len(self.probabilities)), self.probabilities, strict=True))

    @property
    def emotions(self) -> dict[str, float]:
        return dict(zip(GOEMOTIONS_LABELS, self.probabilities, strict=False))

    @property
    def signals(self) -> dict[str, float] | None:
        """The learning signals' probabilities; None when the model has no such outputs."""
        if len(self.probabilities) == len(GOEMOTIONS_LABELS):
            return None
        return dict(zip(LEARNING_SIGNALS, self.probabilities[len(GOEMOTIONS_LABELS) :], strict=True))

    @property
    def emotion_labels(self) -> list[str]:
        return [label for label in self.labels if label in _EMOTIONS]

    @property
    def signal_labels(self) -> list[str]:
        return [label for label in self.labels if label in _SIGNALS]


class Inference(Protocol):
    async def infer(self, texts: list[str]) -> list[Prediction]: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


class InvalidModelOutput(GatewayError):
    """Triton answered, but not with a usable answer: never cached, never served (502), and not an
    outage (the circuit breaker does not count it). ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        message = f"the model returned an invalid answer ({detail}); the text was not cached"
        super().__init__(ErrorCode.INVALID_MODEL_OUTPUT, message)
        self.reason = reason


def check_predictions(predictions: Sequence[Prediction], n: int) -> None:
    """Raise InvalidModelOutput unless ``predictions`` are ``n`` well-formed answers: 28 (or 28 + the
    learning signals) finite probabilities in [0, 1], known label names, a non-empty model version."""
    if len(predictions) != n:
        raise InvalidModelOutput("shape", f"{len(predictions)} rows for {n} texts")
    for p in predictions:
        if len(p.probabilities) not in WIDTHS:
            raise InvalidModelOutput("shape", f"{len(p.probabilities)} probabilities, expected {_widths()}")
        if not all(math.isfinite(x) for x in p.probabilities):
            raise InvalidModelOutput("non_finite", "non-finite probabilities")
        if not all(0.0 <= x <= 1.0 for x in p.probabilities):
            raise InvalidModelOutput("out_of_range", "probabilities outside [0, 1]")
        _check_labels(p.labels, len(p.probabilities))
        if not p.model_version or not p.model_version.strip():
            raise InvalidModelOutput("missing_version", "no model version")


def _widths() -> str:
    return " or ".join(str(w) for w in WIDTHS)


def _check_labels(labels: list[str], width: int) -> None:
    known = output_labels(width)
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise InvalidModelOutput("unknown_label", f"unknown label {unknown[0][:40]!r}")


def _text(value: Any, reason: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidModelOutput(reason, "a string output that is not UTF-8") from None
    return str(value)


def _rows(array: npt.NDArray[Any], n: int, name: str) -> npt.NDArray[Any]:
    """A string output as ``n`` rows (a 1-d output is one column)."""
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != n:
        raise InvalidModelOutput("shape", f"{name} has shape {list(array.shape)} for {n} texts")
    return array


def parse_outputs(
    probabilities: npt.NDArray[Any] | None,
    labels: npt.NDArray[Any] | None,
    versions: npt.NDArray[Any] | None,
    n: int,
) -> list[Prediction]:
    """The ensemble's three outputs as ``n`` checked predictions; InvalidModelOutput says what is wrong."""
    for name, array in ((PROBABILITIES, probabilities), (LABELS, labels), (MODEL_VERSION, versions)):
        if array is None:
            raise InvalidModelOutput("missing_output", f"no {name} output")
    assert probabilities is not None and labels is not None and versions is not None
    if probabilities.ndim != 2 or probabilities.shape[0] != n or probabilities.shape[1] not in WIDTHS:
        raise InvalidModelOutput(
            "shape",
            f"{PROBABILITIES} has shape {list(probabilities.shape)}, expected [{n}, {_widths()}]",
        )
    try:
        probs = probabilities.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidModelOutput("shape", f"{PROBABILITIES} is not numeric") from None
    if not np.isfinite(probs).all():
        raise InvalidModelOutput("non_finite", "non-finite probabilities")
    if ((probs < 0.0) | (probs > 1.0)).any():
        raise InvalidModelOutput("out_of_range", "probabilities outside [0, 1]")
    label_rows = _rows(labels, n, LABELS)
    version_rows = _rows(versions, n, MODEL_VERSION)
    predictions = []
    for row, lab, ver in zip(probs.tolist(), label_rows, version_rows, strict=True):
        names = [_text(x, "unknown_label") for x in lab if x]
        _check_labels(names, len(row))
        version = [_text(x, "missing_version") for x in ver if x]
        if len(version) != 1 or not version[0].strip():
            raise InvalidModelOutput("missing_version", "no model version for a row")
        predictions.append(Prediction(row, names, version[0]))
    return predictions


def _connect(url: str) -> Any:
    # Fast reconnects: after a Triton restart the channel is back within ~1 s instead of gRPC's
    # default backoff (up to 120 s). Size limits as tritonclient's own defaults.
    return triton.InferenceServerClient(
        url,
        channel_args=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 2_000),
        ],
    )


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``"a:8001, b:8001"`` (or a list) as endpoints, first = primary, duplicates dropped."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = list(dict.fromkeys(u.strip() for u in items if u.strip()))
    if not out:
        raise ValueError("no Triton endpoint: give at least one host:port")
    return out


class TritonClient:
    """One gRPC channel per endpoint for the app's lifetime (created in the lifespan, closed at shutdown).

    Calls go to the endpoint that last answered (the first one to begin with). When a call fails there
    with UNAVAILABLE or NOT_FOUND, the same call is tried once on each other endpoint, in order; the
    caller (and its circuit breaker) sees one failure only when every endpoint failed. Each attempt has
    its own deadline (``timeout_s``). ``connect`` makes a client for a URL (tests pass fakes).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        timeout_s: float,
        connect: Callable[[str], Any] = _connect,
    ) -> None:
        self.urls = split_urls(urls)
        self.model = model
        self.timeout_s = timeout_s
        self._clients = [connect(url) for url in self.urls]
        self._current = 0

    @property
    def current_url(self) -> str:
        """The endpoint calls go to first (the one that last answered)."""
        return self.urls[self._current]

    async def infer(self, texts: list[str]) -> list[Prediction]:
        inp = triton.InferInput(TEXT, [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
        outputs = [triton.InferRequestedOutput(name) for name in (PROBABILITIES, LABELS, MODEL_VERSION)]
        order = [self._current, *(i for i in range(len(self.urls)) if i != self._current)]
        error: InferenceServerException | None = None
        for attempt, index in enumerate(order):
            try:
                result = await self._clients[index].infer(
                    self.model, [inp], outputs=outputs, client_timeout=self.timeout_s
                )
            except InferenceServerException as exc:
                error = exc
                if str(exc.status()) not in FAILOVER_STATUSES:
                    raise _translate(exc, self.timeout_s) from None
                if attempt + 1 < len(order):
                    log.warning(
                        "Triton %s failed (%s); trying %s",
                        self.urls[index],
                        exc.status(),
                        self.urls[order[attempt + 1]],
                    )
                continue
            if index != self._current:
                log.info("Triton endpoint switched from %s to %s", self.urls[self._current], self.urls[index])
                self._current = index
            return parse_outputs(
                result.as_numpy(PROBABILITIES),
                result.as_numpy(LABELS),
                result.as_numpy(MODEL_VERSION),
                len(texts),
            )
        assert error is not None
        raise _translate(error, self.timeout_s) from None

    async def _endpoint_ready(self, client: Any) -> bool:
        try:
            return bool(
                await client.is_server_ready(client_timeout=1.0)
                and await client.is_model_ready(self.model, client_timeout=1.0)
            )
        except InferenceServerException:
            return False

    async def ready(self) -> bool:
        """Ready when any endpoint is (a call fails over to it)."""
        return any(await asyncio.gather(*(self._endpoint_ready(c) for c in self._clients)))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)


def _translate(exc: InferenceServerException, timeout_s: float) -> GatewayError:
    status = str(exc.status())
    code = _STATUS_TO_CODE.get(status, ErrorCode.BACKEND_ERROR)
    if code == ErrorCode.INVALID_REQUEST:
        # Triton's own message names the row and the problem ("TEXT row 1 is not valid UTF-8").
        message = str(exc.message()).removeprefix(f"in ensemble '{ENSEMBLE}', ")
    elif code == ErrorCode.BACKEND_TIMEOUT:
        message = f"the model did not answer within {timeout_s:g} s; retry later"
    elif code == ErrorCode.BACKEND_UNAVAILABLE:
        message = "the model server is unavailable or not ready; retry later"
    else:
        log.warning("Triton error %s: %s", status, exc.message())
        message = "the model server returned an error"
    headers = (
        {"Retry-After": "1"} if code in (ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.BACKEND_TIMEOUT) else None
    )
    return GatewayError(code, message, headers)


# The failures that say Triton is unwell. A client's bad input does not, and neither does an invalid
# answer (``invalid_model_output``: Triton answered; that request fails on its own, and an open circuit
# would only turn every other text away too).
SERVER_FAULTS = frozenset({ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.BACKEND_TIMEOUT, ErrorCode.BACKEND_ERROR})


def is_server_fault(exc: Exception) -> bool:
    return isinstance(exc, GatewayError) and exc.code in SERVER_FAULTS


class GuardedInference:
    """An ``Inference`` behind a circuit breaker (``gateway.resilience``): after repeated server failures,
    503 at once instead of sending every request into a server that is down (each would wait for its
    deadline and hold a slot). Wraps the real Triton client or a fake."""

    def __init__(
        self, inner: Inference, breaker: Breaker, on_reject: Callable[[], None] | None = None
    ) -> None:
        self.inner = inner
        self.breaker = breaker
        self._on_reject = on_reject or (lambda: None)

    async def infer(self, texts: list[str]) -> list[Prediction]:
        # Only server faults count; bad input or a cancelled caller says nothing about Triton.
        try:
            return await self.breaker.call(lambda: self.inner.infer(texts), is_server_fault)
        except CircuitOpen:
            self._on_reject()
            raise

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
