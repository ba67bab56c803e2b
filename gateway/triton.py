"""Async Triton gRPC client for the goemotions ensemble: one call per request batch, a deadline per call,
and Triton's failures translated into the gateway's error table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from export.arrays import Array
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

# gRPC status -> gateway error code. Triton's "queue full" rejection is RESOURCE_EXHAUSTED (overload)
# or UNAVAILABLE depending on version: both mean "try again shortly", never the client's fault.
_STATUS_TO_CODE = {
    "StatusCode.INVALID_ARGUMENT": "invalid_request",
    "StatusCode.DEADLINE_EXCEEDED": "backend_timeout",
    "StatusCode.UNAVAILABLE": "backend_unavailable",
    "StatusCode.RESOURCE_EXHAUSTED": "backend_unavailable",
    "StatusCode.NOT_FOUND": "backend_unavailable",  # model not loaded
    "StatusCode.CANCELLED": "backend_unavailable",
}


@dataclass(frozen=True)
class Prediction:
    """Model output for one text: 28 probabilities (labels-file order) and the labels over threshold."""

    probabilities: list[float]
    labels: list[str]


class Inference(Protocol):
    async def infer(self, texts: list[str]) -> list[Prediction]: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


def _predictions(probs: Array, labels: Array) -> list[Prediction]:
    return [
        Prediction(
            [float(p) for p in row], [x.decode() if isinstance(x, bytes) else str(x) for x in lab if x]
        )
        for row, lab in zip(probs, labels, strict=True)
    ]


class TritonClient:
    """One gRPC channel for the app's lifetime (created in the lifespan, closed at shutdown)."""

    def __init__(self, url: str, model: str, timeout_s: float) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        # Fast reconnects: after a Triton restart the channel is back within ~1 s instead of gRPC's
        # default backoff (up to 120 s). Size limits as tritonclient's own defaults.
        self._client = triton.InferenceServerClient(
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

    async def infer(self, texts: list[str]) -> list[Prediction]:
        inp = triton.InferInput("TEXT", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
        outputs = [triton.InferRequestedOutput("PROBABILITIES"), triton.InferRequestedOutput("LABELS")]
        try:
            result = await self._client.infer(
                self.model, [inp], outputs=outputs, client_timeout=self.timeout_s
            )
        except InferenceServerException as exc:
            raise _translate(exc, self.timeout_s) from None
        probs, labels = result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS")
        if probs is None or labels is None or probs.shape[0] != len(texts):
            raise GatewayError("backend_error", "Triton returned an unexpected response shape")
        return _predictions(probs, labels)

    async def ready(self) -> bool:
        try:
            return bool(
                await self._client.is_server_ready(client_timeout=1.0)
                and await self._client.is_model_ready(self.model, client_timeout=1.0)
            )
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self._client.close()


def _translate(exc: InferenceServerException, timeout_s: float) -> GatewayError:
    status = str(exc.status())
    code = _STATUS_TO_CODE.get(status, "backend_error")
    if code == "invalid_request":
        # Triton's own message names the row and the problem ("TEXT row 1 is not valid UTF-8").
        message = str(exc.message()).removeprefix("in ensemble 'goemotions', ")
    elif code == "backend_timeout":
        message = f"the model did not answer within {timeout_s:g} s; retry later"
    elif code == "backend_unavailable":
        message = "the model server is unavailable or not ready; retry later"
    else:
        log.warning("Triton error %s: %s", status, exc.message())
        message = "the model server returned an error"
    headers = {"Retry-After": "1"} if code in ("backend_unavailable", "backend_timeout") else None
    return GatewayError(code, message, headers)
