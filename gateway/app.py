"""The FastAPI app: ``create_app()`` + lifespan (Triton client, cache, learner store, policy, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.names import GOEMOTIONS_LABELS
from gateway import audit
from gateway.breaker import BreakerInference, CircuitBreaker, State
from gateway.cache import MemoryCache, NoCache, RedisCache, ResultCache
from gateway.errors import GatewayError, error_response, install_error_handlers
from gateway.learning.policy import load_policy
from gateway.learning.trajectory import (
    MemoryTrajectoryStore,
    RedisTrajectoryStore,
    TrajectoryStore,
    classify_trend,
)
from gateway.metrics import Metrics
from gateway.ratelimit import SlidingWindowLimiter, retry_after_header
from gateway.schemas import (
    EmotionResult,
    EmotionsRequest,
    EmotionsResponse,
    ErrorResponse,
    HistoryResponse,
    LearnerIdPath,
    LearningStateOut,
    ModelInfo,
    TrajectoryPointOut,
    TrajectoryResponse,
    TrendOut,
)
from gateway.service import Core, analyse_bounded, probe_version, watch_version
from gateway.settings import Settings, get_settings
from gateway.triton import Inference, TritonClient

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        401: "missing or wrong API key",
        413: "request body too large",
        422: "invalid input: the message says what to fix",
        429: "overloaded: retry after the Retry-After seconds",
        502: "the model server returned an error, or an invalid answer (invalid_model_output: not cached)",
        503: "model server unavailable or not ready",
        504: "model server did not answer in time",
    }.items()
}


class BodyLimit:
    """413 (in the gateway's JSON error format) for bodies over the limit: by Content-Length up front,
    or while a chunked body streams in. Starlette's own limiter answers in plain text."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body over {self.max_bytes} bytes; send fewer or shorter texts"
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response("payload_too_large", message)(scope, receive, send)
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


class Timing:
    """``x-total-time`` on every response and request count/latency metrics per route template.
    Plain ASGI: BaseHTTPMiddleware costs a task per request, on the hot path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
            core: Core | None = getattr(scope["app"].state, "core", None) if "app" in scope else None
            if core is not None:
                path = getattr(scope.get("route"), "path", "unmatched")
                core.metrics.requests.labels(path, scope["method"], str(status)).inc()
                core.metrics.latency.labels(path).observe(time.perf_counter() - started)


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


CoreDep = Annotated[Core, Depends(_core)]


def api_key_from(headers: Mapping[str, str]) -> str:
    """The key in ``X-API-Key`` or ``Authorization: Bearer`` (HTTP requests and WebSocket handshakes)."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given


def require_api_key(request: Request, core: CoreDep) -> None:
    """Auth (when keys are configured), then the per-client rate limit (when set)."""
    given = api_key_from(request.headers)
    if core.api_keys:
        _check_key(given, core.api_keys)
    if core.limiter is not None:
        client = f"key:{given}" if core.api_keys else f"ip:{request.client.host if request.client else '-'}"
        wait = core.limiter.check(client)
        if wait is not None:
            core.metrics.rate_limited.inc()
            raise GatewayError(
                "overloaded",
                f"rate limit of {core.limiter.limit} requests per minute reached; retry later",
                {"Retry-After": retry_after_header(wait)},
            )


def _check_key(given: str, keys: list[str]) -> None:
    # compare_digest against every key: the time taken does not reveal which key (or prefix) matched
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not ok:
        raise GatewayError(
            "unauthorized",
            "missing or invalid API key: send it in the X-API-Key header",
            {"WWW-Authenticate": "Bearer"},
        )


def _result(scored: Any, index: int) -> EmotionResult:
    s = scored.state
    return EmotionResult(
        text_index=index,
        emotions=dict(zip(GOEMOTIONS_LABELS, scored.prediction.probabilities, strict=True)),
        labels=scored.prediction.labels,
        primary_emotion=scored.primary_emotion,
        confidence=scored.confidence,
        cached=scored.cached,
        learning_state=LearningStateOut(
            learning_emotions=s.learning_emotions,
            valence=s.valence,
            arousal=s.arousal,
            dominance=s.dominance,
            readiness={"state": s.readiness_state, "score": s.readiness_score},
            intervention_level=s.intervention_level,
            reasons=s.reasons,
        ),
    )


def _trend(trend: Any) -> TrendOut:
    return TrendOut(label=trend.label, slope=trend.slope, volatility=trend.volatility, points=trend.points)


async def _not_ready_reason(core: Core) -> str | None:
    """Why this gateway should get no traffic now, or None when it should."""
    if not await core.triton.ready():
        if isinstance(core.triton, BreakerInference) and core.triton.breaker.state is not State.CLOSED:
            state = core.triton.breaker.state.name.lower().replace("_", "-")
            return f"the circuit breaker is {state}: recent Triton calls failed"
        return "Triton or the model is not ready"
    try:
        version = await probe_version(core)
    except GatewayError as exc:
        return f"the probe inference failed: {exc.message}"
    except Exception:
        log.exception("the readiness probe inference failed")
        return "the probe inference failed (an unexpected error; see the gateway log)"
    expected = core.settings.expected_model_version
    if expected and not version.startswith(expected):
        return f"serving model version {version}, expected {expected} (GATEWAY_EXPECTED_MODEL_VERSION)"
    return None


def build_router() -> APIRouter:
    router = APIRouter()
    protected = [Depends(require_api_key)]

    @router.post(
        "/v1/emotions",
        response_model=EmotionsResponse,
        responses=ERRORS,
        dependencies=protected,
        summary="GoEmotions probabilities, labels and learning state for one text or a batch",
    )
    async def emotions(body: EmotionsRequest, response: Response, core: CoreDep) -> EmotionsResponse:
        started = time.perf_counter()
        context = body.context.model_dump() if body.context else None
        outcome = await analyse_bounded(core, body.all_texts(), body.learner_id, context)
        audit.record_outcome(core, outcome, body.learner_id, body.all_texts(), time.perf_counter() - started)
        response.headers["x-inference-time"] = f"{outcome.inference_seconds * 1000:.3f}"
        response.headers["x-cache"] = "hit" if outcome.all_cached else "miss"
        return EmotionsResponse(
            model=ModelInfo(name=core.settings.triton_model, version=outcome.model_version),
            results=[_result(s, i) for i, s in enumerate(outcome.results)],
            learner_id=body.learner_id,
            trend=_trend(outcome.trend) if outcome.trend else None,
        )

    @router.get(
        "/v1/learners/{learner_id}/trajectory",
        response_model=TrajectoryResponse,
        responses=ERRORS,
        dependencies=protected,
        summary="A learner's recent learning states and their trend",
    )
    async def trajectory(learner_id: str, core: CoreDep) -> TrajectoryResponse:
        points = await core.trajectories.history(learner_id)
        return TrajectoryResponse(
            learner_id=learner_id,
            trend=_trend(classify_trend(points, core.policy)),
            points=[TrajectoryPointOut(**p.__dict__) for p in points],
        )

    @router.get(
        "/v1/learners/{learner_id}/history",
        response_model=HistoryResponse,
        responses=ERRORS,
        dependencies=protected,
        summary="A learner's audit trail: each analysed text's labels, learning state and model version",
        description="Newest first. 503 when the audit trail is disabled on this gateway or its database "
        "is unavailable. Page with the response's next_before and next_before_id.",
    )
    async def history(
        learner_id: LearnerIdPath,
        core: CoreDep,
        limit: Annotated[int, Query(ge=1, le=500, description="entries per page")] = 50,
        before: Annotated[
            AwareDatetime | None, Query(description="only entries older than this (ISO 8601 with a zone)")
        ] = None,
        before_id: Annotated[
            int | None,
            Query(ge=0, le=2**63 - 1, description="with before: the previous page's next_before_id"),
        ] = None,
    ) -> HistoryResponse:
        return await audit.read_history(core, learner_id, limit, before, before_id)

    @router.get("/healthz", summary="process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Triton is ready, answers a probe with a well-formed result, and serves the expected model",
        description="503 (with a `reason`) when Triton or the model is not ready, the circuit is open, the "
        "probe inference fails or is malformed, or the served version does not start with "
        "GATEWAY_EXPECTED_MODEL_VERSION. `version` is the served model version (null before Triton's first "
        "answer).",
    )
    async def readyz(core: CoreDep) -> JSONResponse:
        reason = await _not_ready_reason(core)
        body: dict[str, Any] = {"model": core.settings.triton_model, "version": core.served_version}
        if isinstance(core.triton, BreakerInference):
            body["circuit"] = core.triton.breaker.state.name.lower().replace("_", "-")
        body["ready"] = reason is None
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @router.get("/metrics", dependencies=protected, summary="Prometheus metrics")
    async def metrics(core: CoreDep) -> Response:
        return Response(generate_latest(core.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _redis(settings: Settings) -> Redis | None:
    if "redis" not in (settings.cache_backend, settings.trajectory_backend):
        return None
    if not settings.redis_url:
        raise ValueError("GATEWAY_REDIS_URL is required when the cache or trajectory backend is 'redis'")
    # Short timeouts: a dead Redis must cost a request milliseconds, not seconds (it degrades to no cache).
    return Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)


def create_app(settings: Settings | None = None, triton: Inference | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Fail at start-up, with the file's own error message, rather than on the first request.
        policy = load_policy(settings.policy_file)
        metrics = Metrics()
        audit_trail = audit.from_settings(settings, metrics)  # None when GATEWAY_AUDIT_BACKEND=off
        redis = _redis(settings)
        cache: ResultCache
        if redis is not None and settings.cache_backend == "redis":
            cache = RedisCache(redis, settings.cache_ttl_s, on_error=metrics.cache_errors.inc)
        elif settings.cache_backend == "memory":
            cache = MemoryCache(settings.cache_size, settings.cache_ttl_s)
        else:
            cache = NoCache()
        trajectories: TrajectoryStore = (
            RedisTrajectoryStore(redis, policy)
            if redis is not None and settings.trajectory_backend == "redis"
            else MemoryTrajectoryStore(policy)
        )
        breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_s,
            on_change=lambda state: metrics.circuit_state.set(state.value),
        )
        client = BreakerInference(
            triton or TritonClient(settings.triton_urls(), settings.triton_model, settings.triton_timeout_s),
            breaker,
            on_reject=metrics.circuit_rejections.inc,
        )
        limiter = (
            SlidingWindowLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
        )
        core = Core(
            settings=settings,
            triton=client,
            cache=cache,
            trajectories=trajectories,
            policy=policy,
            metrics=metrics,
            api_keys=settings.resolved_api_keys(),
            limiter=limiter,
            audit=audit_trail,
        )
        app.state.core = core
        if audit_trail is not None:
            await audit_trail.start()
        try:
            await probe_version(core)
        except GatewayError as exc:  # Triton down: start anyway, the version comes with its first answer
            log.warning("could not learn the served model version at start-up: %s", exc.message)
        except Exception:
            log.exception("could not learn the served model version at start-up")
        watcher = (
            asyncio.create_task(watch_version(core, settings.version_check_s), name="model-version-check")
            if settings.version_check_s > 0
            else None
        )
        log.info(
            "gateway ready: model %s (%s), Triton %s, cache %s, auth %s",
            settings.triton_model,
            core.served_version or "version not known yet",
            settings.triton_url,
            settings.cache_backend,
            "on" if core.api_keys else "off",
        )
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if audit_trail is not None:
                await audit_trail.stop()  # writes what is queued, within a bounded time
            await client.close()
            await cache.close()
            if redis is not None and settings.cache_backend != "redis":
                await redis.aclose()

    app = FastAPI(
        title="GoEmotions gateway",
        version="0.1.0",
        description="Emotions (28 GoEmotions labels, multi-label) and a learning-state view for learning "
        "platforms, served by NVIDIA Triton.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(build_router())
    from gateway.stream import build_stream_router  # it uses this module's helpers: import here

    app.include_router(build_stream_router())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-api-key", "authorization"],
        )

    app.add_middleware(Timing)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
