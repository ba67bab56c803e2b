"""Whether this gateway should get traffic now (``/readyz``)."""

from __future__ import annotations

import logging

from gateway.backends.triton import GuardedInference
from gateway.core.pipeline import Pipeline
from gateway.errors import GatewayError
from gateway.resilience import State

log = logging.getLogger(__name__)


def circuit_state(pipeline: Pipeline) -> str | None:
    """The Triton circuit breaker's state (``closed``, ``half-open``, ``open``), or None without one."""
    triton = pipeline.triton
    return triton.breaker.state.label if isinstance(triton, GuardedInference) else None


async def not_ready_reason(pipeline: Pipeline, expected_version: str | None) -> str | None:
    """Why this gateway should get no traffic now, or None when it should: Triton or the model not
    ready, the circuit not closed, the probe inference failing or malformed, or a served version that
    does not start with ``expected_version``."""
    triton = pipeline.triton
    if not await triton.ready():
        if isinstance(triton, GuardedInference) and triton.breaker.state is not State.CLOSED:
            return f"the circuit breaker is {triton.breaker.state.label}: recent Triton calls failed"
        return "Triton or the model is not ready"
    try:
        version = await pipeline.probe_version()
    except GatewayError as exc:
        return f"the probe inference failed: {exc.message}"
    except Exception:
        log.exception("the readiness probe inference failed")
        return "the probe inference failed (an unexpected error; see the gateway log)"
    if expected_version and not version.startswith(expected_version):
        return (
            f"serving model version {version}, expected {expected_version} (GATEWAY_EXPECTED_MODEL_VERSION)"
        )
    return None
