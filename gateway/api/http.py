"""The HTTP routes: parse → call the core → shape the response (``responses``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime

from gateway.api import responses
from gateway.api.deps import Analyst, LearnerEraser, LearnerReader, MetricsReader, PolicyAdmin, ServicesDep
from gateway.api.responses import error_responses
from gateway.api.schemas import (
    EmotionsRequest,
    EmotionsResponse,
    ErasureCounts,
    ErasureResponse,
    HealthResponse,
    HistoryResponse,
    IdempotencyKey,
    LearnerIdPath,
    ModelInfo,
    OutcomeIn,
    OutcomeOut,
    PolicyOut,
    PolicySwitchIn,
    PolicyVersionOut,
    ReadinessResponse,
    TrajectoryPointOut,
    TrajectoryResponse,
)
from gateway.core.history import read_history
from gateway.core.outcomes import report_outcome
from gateway.core.policies import PolicyBook, PolicyEntry, UnknownPolicy
from gateway.core.readiness import TritonState, circuit_state, triton_state
from gateway.errors import ErrorCode, GatewayError
from gateway.services import Services

log = logging.getLogger(__name__)
router = APIRouter()


@router.post(
    "/v1/emotions",
    response_model=EmotionsResponse,
    responses=error_responses(401, 403, 409, 413, 422, 429, 500, 502, 503, 504),
    summary="GoEmotions probabilities, labels and learning state for one text or a batch",
    description="Needs the `analyse` scope. A `learner_id` is the caller's tenant's learner. Send an "
    "`Idempotency-Key` to make retries safe: a retry gets the first answer, not a second trajectory "
    "point and audit row.",
)
async def emotions(
    body: EmotionsRequest,
    response: Response,
    services: ServicesDep,
    caller: Analyst,
    idempotency_key: IdempotencyKey = None,
) -> EmotionsResponse | Response:
    request = body.model_dump(mode="json")
    async with services.replays.once(
        caller.tenant, idempotency_key, "POST /v1/emotions", request, body.learner_id
    ) as once:
        if once.stored is not None:
            return responses.replayed(once)
        context = body.context.model_dump() if body.context else None
        analysis = await services.pipeline.analyse(
            body.all_texts(), body.learner_id, context, channel="http", tenant=caller.tenant
        )
        response.headers["x-inference-time"] = f"{analysis.inference_seconds * 1000:.3f}"
        response.headers["x-cache"] = "hit" if analysis.all_cached else "miss"
        answer = EmotionsResponse(
            model=ModelInfo(name=services.settings.triton_model, version=analysis.model_version),
            results=[responses.result(analysis, i) for i in range(len(analysis.results))],
            learner_id=body.learner_id,
            trend=responses.trend(analysis.trend) if analysis.trend else None,
        )
        if idempotency_key is not None:
            once.keep(200, answer.model_dump(mode="json"))
    return answer


@router.get(
    "/v1/learners/{learner_id}/trajectory",
    response_model=TrajectoryResponse,
    responses=error_responses(401, 403, 404, 422, 429, 500, 503),
    summary="A learner's recent learning states and their trend",
    description="Needs the `learners:read` scope. 404 (`not_found`) when the caller's tenant has no points "
    "for this learner (the same answer for another tenant's learner); 503 (with Retry-After) while the "
    "learner store (Redis) is unavailable.",
)
async def trajectory(
    learner_id: LearnerIdPath, services: ServicesDep, caller: LearnerReader
) -> TrajectoryResponse:
    points, trend = await services.pipeline.trajectory(caller.tenant, learner_id)
    return TrajectoryResponse(
        learner_id=learner_id,
        trend=responses.trend(trend),
        points=[TrajectoryPointOut(**p.__dict__) for p in points],
    )


@router.get(
    "/v1/learners/{learner_id}/history",
    response_model=HistoryResponse,
    responses=error_responses(401, 403, 404, 422, 429, 500, 503),
    summary="A learner's audit trail: each analysed text's labels, learning state and model version",
    description="Needs the `learners:read` scope. Newest first. Page with the response's next_before and "
    "next_before_id. 404 (`feature_disabled`) when the audit trail is turned off on this gateway; 404 "
    "(`not_found`) when the caller's tenant has no rows for this learner (the same answer for another "
    "tenant's learner); 503 (with Retry-After) when its database is unavailable.",
)
async def history(
    learner_id: LearnerIdPath,
    services: ServicesDep,
    caller: LearnerReader,
    limit: Annotated[int, Query(ge=1, le=500, description="entries per page")] = 50,
    before: Annotated[
        AwareDatetime | None, Query(description="only entries older than this (ISO 8601 with a zone)")
    ] = None,
    before_id: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="with before: the previous page's next_before_id"),
    ] = None,
) -> HistoryResponse:
    page = await read_history(services.audit_trail, caller.tenant, learner_id, limit, before, before_id)
    return HistoryResponse(
        learner_id=learner_id,
        entries=[responses.audit_entry(e) for e in page.entries],
        next_before=page.next_before,
        next_before_id=page.next_before_id,
    )


@router.post(
    "/v1/outcomes",
    response_model=OutcomeOut,
    status_code=201,
    responses=error_responses(401, 403, 404, 409, 422, 429, 500, 503),
    summary="Report what happened after an analysed text (for fitting the learning-state policy)",
    description="Needs the `analyse` scope. Links the outcome to the result's audit row (which keeps the "
    "features and policy version that decided) under the caller's tenant. 404 (`not_found`) when the "
    "tenant's learner has no such result (the same answer for another tenant's), 404 "
    "(`feature_disabled`) when the audit trail is off; 503 (with Retry-After) while its database is "
    "unavailable. Erasing the learner removes their outcomes too. An `Idempotency-Key` makes a retry "
    "return the first answer instead of recording the outcome twice.",
)
async def outcomes(
    body: OutcomeIn, services: ServicesDep, caller: Analyst, idempotency_key: IdempotencyKey = None
) -> OutcomeOut | Response:
    request = body.model_dump(mode="json")
    async with services.replays.once(
        caller.tenant, idempotency_key, "POST /v1/outcomes", request, body.learner_id
    ) as once:
        if once.stored is not None:
            return responses.replayed(once)
        stored = await report_outcome(
            services.audit_trail,
            caller.tenant,
            body.learner_id,
            body.result_id,
            body.outcome,
            body.label,
            caller.key_id,
        )
        answer = OutcomeOut(id=stored, result_id=body.result_id, outcome=body.outcome)
        if idempotency_key is not None:
            once.keep(201, answer.model_dump(mode="json"))
    return answer


def _policy_view(book: PolicyBook, tenant: str) -> PolicyOut:
    def version(entry: PolicyEntry) -> PolicyVersionOut:
        risk_model = entry.policy.intervention.risk_model
        return PolicyVersionOut(
            version=entry.version,
            source=entry.source,
            risk="hand_set" if risk_model is None else "fitted",
            readiness="hand_set" if entry.policy.readiness.model is None else "fitted",
            fitted=dict(risk_model.fitted) if risk_model is not None else {},
        )

    return PolicyOut(
        active=book.active_for(tenant).version,
        default=book.active.version,
        chosen_by_tenant=book.chosen_by(tenant),
        switchable=book.switchable,
        versions=[version(e) for e in book.versions()],
        rejected=book.rejected(),
    )


@router.get(
    "/v1/policy",
    response_model=PolicyOut,
    responses=error_responses(401, 403, 429, 500),
    summary="The learning-state policy the caller's tenant uses and the versions it can switch to",
    description="Needs the `policy:admin` scope. Versions come from GATEWAY_POLICY_DIR (re-read every "
    "GATEWAY_POLICY_CHECK_S seconds) plus the start-up policy; files that fail validation are listed under "
    "`rejected` with the reason.",
)
async def policy(services: ServicesDep, caller: PolicyAdmin) -> PolicyOut:
    book = services.pipeline.policies
    await asyncio.to_thread(book.refresh)
    return _policy_view(book, caller.tenant)


@router.put(
    "/v1/policy",
    response_model=PolicyOut,
    responses=error_responses(401, 403, 404, 422, 429, 500, 503),
    summary="Switch the caller's tenant's learning-state policy, without a restart",
    description=(
        "Needs the `policy:admin` scope. Every later analysis of the caller's tenant uses the version (and "
        "reports it as `policy_version`); a key of the `default` tenant (the operator's; every request "
        "when auth is off) switches the deployment's version, which tenants without their own choice "
        "follow. With GATEWAY_POLICY_DIR the choice is written to the folder, so the other replicas "
        "follow within GATEWAY_POLICY_CHECK_S seconds. 404 (`not_found`) for a version the gateway does "
        "not have (GET /v1/policy lists them); 503 (with Retry-After) when the folder cannot be written "
        "(nothing is switched then)."
    ),
)
async def switch_policy(body: PolicySwitchIn, services: ServicesDep, caller: PolicyAdmin) -> PolicyOut:
    book = services.pipeline.policies
    await asyncio.to_thread(book.refresh)
    try:
        await asyncio.to_thread(book.activate, body.version, caller.tenant)
    except UnknownPolicy:
        raise GatewayError(
            ErrorCode.NOT_FOUND, f"no valid policy of version {body.version!r} (GET /v1/policy lists them)"
        ) from None
    except OSError as exc:
        raise _folder_unwritable(f"switch of tenant {caller.tenant} to {body.version}", exc) from None
    log.info("policy switched to %s by key %s (tenant %s)", body.version, caller.key_id, caller.tenant)
    return _policy_view(book, caller.tenant)


@router.delete(
    "/v1/policy",
    response_model=PolicyOut,
    responses=error_responses(401, 403, 429, 500, 503),
    summary="The caller's tenant follows the deployment's learning-state policy again",
    description="Needs the `policy:admin` scope. Idempotent (nothing to undo for the `default` tenant, whose "
    "choice is the deployment's). 503 (with Retry-After) when the policy folder cannot be written.",
)
async def forget_policy(services: ServicesDep, caller: PolicyAdmin) -> PolicyOut:
    book = services.pipeline.policies
    try:
        await asyncio.to_thread(book.forget, caller.tenant)
    except OSError as exc:
        raise _folder_unwritable(f"reset of tenant {caller.tenant}", exc) from None
    return _policy_view(book, caller.tenant)


def _folder_unwritable(what: str, exc: OSError) -> GatewayError:
    """The shared policy folder is read-only or unreachable: a 503, and nothing was switched."""
    log.error("policy %s failed: cannot write the policy folder: %s", what, exc)
    return GatewayError(
        ErrorCode.BACKEND_UNAVAILABLE,
        "cannot write the policy folder (read-only or unavailable); nothing was switched",
        {"Retry-After": "30"},
    )


@router.delete(
    "/v1/learners/{learner_id}",
    response_model=ErasureResponse,
    responses=error_responses(401, 403, 422, 429, 500, 503),
    summary="Erase a learner: their trajectory and audit rows, under the caller's tenant",
    description="Needs the `learners:erase` scope. Idempotent: a learner with nothing stored (or another "
    "tenant's) answers 200 with zero counts. The erasure itself is recorded in the audit trail without "
    "the learner id (a keyed hash, the counts, the key id). 503 (with Retry-After) while the learner "
    "store or the audit database is unavailable: retry.",
)
async def erase_learner(
    learner_id: LearnerIdPath, services: ServicesDep, caller: LearnerEraser
) -> ErasureResponse:
    erased = await services.pipeline.erase(caller.tenant, learner_id, caller.key_id)
    return ErasureResponse(
        learner_id=learner_id,
        removed=ErasureCounts(
            trajectory_points=erased.trajectory_points,
            audit_rows=erased.audit_rows,
            idempotent_responses=erased.idempotent_responses,
        ),
    )


@router.get(
    "/healthz",
    response_model=HealthResponse,
    summary="the gateway process is up (the liveness probe); depends on nothing else",
)
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


# /readyz's reason while the gateway drains before a shutdown (gateway/draining.py).
DRAINING = "draining: this gateway is shutting down; requests are still answered until it stops"

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "required": True,
        "schema": {"type": "string"},
    }
}


async def _readiness(services: ServicesDep) -> tuple[dict[str, object], TritonState]:
    """The readiness body (``ready`` left to the route) and what the Triton check found."""
    pipeline = services.pipeline
    state = await triton_state(pipeline, services.settings.expected_model_version)
    body: dict[str, object] = {"model": services.settings.triton_model, "version": pipeline.served.version}
    circuit = circuit_state(pipeline)
    if circuit is not None:
        body["circuit"] = circuit
    body["triton"] = "ready" if state.ready else "unavailable"
    if state.reason is not None:
        body["reason"] = state.reason
    return body, state


def _unavailable(body: dict[str, object], services: Services) -> JSONResponse:
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(services.settings.retry_after_s)})


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "not ready: `reason` says why"}},
    summary="this gateway answers requests (the readiness probe); Triton's state is reported beside it",
    description="200 while the gateway answers requests, also while Triton is down (requests then get "
    "503 with Retry-After at once, instead of connection errors from a Service without replicas): "
    "`triton` (and `reason`) report Triton's state. 503 only when Triton serves a model version that does "
    "not start with GATEWAY_EXPECTED_MODEL_VERSION, and while the gateway drains before a shutdown "
    "(GATEWAY_SHUTDOWN_DRAIN_S; requests are still answered then). `version` is the served model version "
    "(null before Triton's first answer).",
)
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    body, state = await _readiness(services)
    if request.app.state.drain.active:
        body.update(ready=False, reason=DRAINING)
        return _unavailable(body, services)
    body["ready"] = not state.wrong_version
    return JSONResponse(body, status_code=503 if state.wrong_version else 200)


@router.get(
    "/readyz/triton",
    response_model=ReadinessResponse,
    responses={
        503: {
            "model": ReadinessResponse,
            "description": "Triton does not answer (or not with the expected model): `reason` says why",
            "headers": RETRY_AFTER,
        }
    },
    summary="Triton is ready, answers a probe with a well-formed result, and serves the expected model",
    description="For monitoring and start-up waits, not a readiness probe. 503 (with a `reason` and "
    "Retry-After) when Triton or the model is not ready, the circuit is open, the probe inference fails, "
    "is malformed or takes too long, or the served version does not start with "
    "GATEWAY_EXPECTED_MODEL_VERSION.",
)
async def readyz_triton(services: ServicesDep) -> JSONResponse:
    body, state = await _readiness(services)
    body["ready"] = state.ready
    if state.ready:
        return JSONResponse(body)
    return _unavailable(body, services)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(401, 403, 429, 500, plain_route=True),
    },
    summary="Prometheus metrics",
    description="Needs the `metrics` scope when the gateway has keys.",
)
async def metrics(services: ServicesDep, _caller: MetricsReader) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
