"""Whether this gateway should get traffic (``/readyz``) and whether Triton answers (``/readyz/triton``).

Two questions, kept apart on purpose. A gateway whose Triton is down still answers every request at
once (503 with Retry-After from the circuit breaker or the failed call): it should stay in its Service,
or every replica would leave it together and clients would get connection errors instead of 503s. So
readiness follows the gateway itself; Triton's state is reported beside it (and on ``/readyz/triton``,
which the launcher waits on). The one dependency check that does take a replica out is a served model
version other than GATEWAY_EXPECTED_MODEL_VERSION: that replica would answer, but for the wrong model.
Every check is bounded in time, so a hanging Triton cannot make the probe itself time out.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.backends.triton import GuardedInference
from gateway.core.pipeline import Pipeline
from gateway.errors import GatewayError
from gateway.resilience import State

log = logging.getLogger(__name__)

CHECK_S = 1.5  # under the readiness probe's timeoutSeconds (2) in deploy/k8s/gateway.yaml


@dataclass(frozen=True)
class TritonState:
    """What the readiness check found: whether Triton answers the probe inference now (``reason`` says
    why not), and whether the version it serves is not the expected one."""

    ready: bool
    reason: str | None = None
    wrong_version: bool = False


def circuit_state(pipeline: Pipeline) -> str | None:
    """The Triton circuit breaker's state (``closed``, ``half-open``, ``open``), or None without one."""
    triton = pipeline.triton
    return triton.breaker.state.label if isinstance(triton, GuardedInference) else None


async def triton_state(
    pipeline: Pipeline, expected_version: str | None, timeout_s: float = CHECK_S
) -> TritonState:
    """Triton ready, the circuit closed, the probe inference well-formed, and the served version
    starting with ``expected_version``; within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _check(pipeline, expected_version)
    except TimeoutError:
        return TritonState(False, f"Triton did not answer the readiness check within {timeout_s:g} s")


async def _check(pipeline: Pipeline, expected_version: str | None) -> TritonState:
    triton = pipeline.triton
    if not await triton.ready():
        if isinstance(triton, GuardedInference) and triton.breaker.state is not State.CLOSED:
            return TritonState(
                False, f"the circuit breaker is {triton.breaker.state.label}: recent Triton calls failed"
            )
        return TritonState(False, "Triton or the model is not ready")
    try:
        version = await pipeline.probe_version()
    except GatewayError as exc:
        return TritonState(False, f"the probe inference failed: {exc.message}")
    except Exception:
        log.exception("the readiness probe inference failed")
        return TritonState(False, "the probe inference failed (an unexpected error; see the gateway log)")
    if expected_version and not version.startswith(expected_version):
        return TritonState(
            False,
            f"serving model version {version}, expected {expected_version} (GATEWAY_EXPECTED_MODEL_VERSION)",
            wrong_version=True,
        )
    return TritonState(True)
