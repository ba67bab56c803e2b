"""The gateway's work, free of HTTP: validate texts, answer from the cache or one Triton call, add the
learning state and the learner's trajectory."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from export.labels import LabelSet
from gateway.cache import ResultCache, SingleFlight, cache_key, normalize
from gateway.errors import GatewayError
from gateway.learning.policy import Policy
from gateway.learning.state import LearnerContext, LearningState, assess
from gateway.learning.trajectory import TrajectoryPoint, TrajectoryStore, Trend, classify_trend
from gateway.metrics import Metrics
from gateway.ratelimit import SlidingWindowLimiter
from gateway.settings import Settings
from gateway.triton import Inference, Prediction

if TYPE_CHECKING:  # only the type: the audit package (and psycopg) loads when the app uses it
    from gateway.audit import AuditTrail

log = logging.getLogger(__name__)

# What a learner-store outage raises (Redis down or timing out); anything else is a bug and propagates.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, asyncio.TimeoutError)
STORE_RETRY_S = 5.0


@dataclass
class Scored:
    prediction: Prediction
    cached: bool
    primary_emotion: str
    confidence: float
    state: LearningState


@dataclass
class Outcome:
    results: list[Scored]
    inference_seconds: float
    all_cached: bool
    trend: Trend | None = None


@dataclass
class Core:
    """Everything the routes need, created once in the app's lifespan."""

    settings: Settings
    triton: Inference
    cache: ResultCache
    trajectories: TrajectoryStore
    labels: LabelSet
    policy: Policy
    metrics: Metrics
    api_keys: list[str]
    limiter: SlidingWindowLimiter | None = None
    store_retry_at: float = 0.0
    flight: SingleFlight = field(default_factory=SingleFlight)
    inflight: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    audit: AuditTrail | None = None  # the audit trail, when GATEWAY_AUDIT_BACKEND is not off

    @property
    def model_version(self) -> str:
        return self.labels.model_version


def validate_texts(texts: list[str], settings: Settings) -> list[str]:
    """Normalized texts, or a 422 naming the first text that breaks a limit."""
    if len(texts) > settings.max_texts:
        raise GatewayError(
            "invalid_request", f"too many texts: {len(texts)}; send at most {settings.max_texts} per request"
        )
    out = []
    for i, raw in enumerate(texts):
        where = "text" if len(texts) == 1 else f"texts[{i}]"
        text = normalize(raw)
        if not text:
            raise GatewayError("invalid_request", f"{where} is empty; send some text to analyse")
        if len(text) > settings.max_text_chars:
            raise GatewayError(
                "invalid_request",
                f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can carry lone surrogates ("\ud800"); they are not text and Triton cannot take them.
            raise GatewayError(
                "invalid_request", f"{where} contains an invalid unicode character (an unpaired surrogate)"
            ) from None
        out.append(text)
    return out


async def predict(core: Core, texts: list[str]) -> tuple[list[Prediction], list[bool], float]:
    """Model outputs for normalized texts: cache first, then one Triton call for all misses."""
    keys = [cache_key(core.model_version, t) for t in texts]
    found = await core.cache.get_many(keys)
    text_of = dict(zip(keys, texts, strict=True))
    missing = [k for k, hit in zip(keys, found, strict=True) if hit is None]
    core.metrics.cache.labels("hit").inc(len(keys) - len(missing))
    core.metrics.cache.labels("miss").inc(len(missing))
    inference_seconds = 0.0

    async def compute(batch: list[str]) -> dict[str, Prediction]:
        nonlocal inference_seconds
        core.metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        try:
            predictions = await core.triton.infer([text_of[k] for k in batch])
        except GatewayError as exc:
            core.metrics.triton_errors.labels(exc.code).inc()
            raise
        finally:
            inference_seconds = time.perf_counter() - started
            core.metrics.triton_latency.observe(inference_seconds)
        computed = dict(zip(batch, predictions, strict=True))
        await core.cache.set_many(computed)
        return computed

    fresh = await core.flight.run(missing, compute) if missing else {}
    predictions = [hit if hit is not None else fresh[k] for k, hit in zip(keys, found, strict=True)]
    return predictions, [hit is not None for hit in found], inference_seconds


async def analyse(
    core: Core, texts: list[str], learner_id: str | None, context: LearnerContext | None
) -> Outcome:
    normalized = validate_texts(texts, core.settings)
    predictions, cached, inference_seconds = await predict(core, normalized)
    store_ok = learner_id is not None and time.monotonic() >= core.store_retry_at
    history: list[TrajectoryPoint] = []
    if store_ok and learner_id:
        try:
            history = await core.trajectories.history(learner_id)
        except STORE_ERRORS as exc:
            store_ok = _store_failed(core, exc)
    trend = classify_trend(history, core.policy) if store_ok else None
    results = []
    for prediction, was_cached in zip(predictions, cached, strict=True):
        probs = dict(zip(core.labels.names, prediction.probabilities, strict=True))
        primary = max(probs, key=lambda k: probs[k])
        state = assess(probs, core.policy, context, trend.label if trend else None)
        results.append(Scored(prediction, was_cached, primary, probs[primary], state))
        if learner_id and store_ok:
            point = TrajectoryPoint(
                time.time(), state.readiness_score, state.valence, state.intervention_level, primary
            )
            try:
                await core.trajectories.append(learner_id, point)
            except STORE_ERRORS as exc:
                store_ok = _store_failed(core, exc)
                trend = None
                continue
            history.append(point)
            trend = classify_trend(history, core.policy)
    return Outcome(results, inference_seconds, all(cached), trend)


async def analyse_bounded(
    core: Core, texts: list[str], learner_id: str | None, context: dict[str, Any] | None
) -> Outcome:
    """``analyse`` under the gateway's concurrency limit (429 at once past it, shared by HTTP and the
    stream), with the learner context checked against the policy's ranges."""
    async with core.lock:
        if core.inflight >= core.settings.max_concurrency:
            core.metrics.rejected.inc()
            raise GatewayError(
                "overloaded",
                "too many requests in flight; retry shortly",
                {"Retry-After": str(core.settings.retry_after_s)},
            )
        core.inflight += 1
        core.metrics.inflight.inc()
    try:
        try:
            learner_context = LearnerContext(**context) if context else None
        except ValueError as exc:  # the policy's own range checks: still the client's input
            raise GatewayError("invalid_request", f"context: {exc}") from None
        return await analyse(core, texts, learner_id, learner_context)
    finally:
        core.inflight -= 1
        core.metrics.inflight.dec()


def _store_failed(core: Core, exc: Exception) -> bool:
    """A learner store outage costs the trend, never the answer: log, count, carry on without it."""
    log.warning(
        "learner history store unavailable (%s); answering without the trajectory", type(exc).__name__
    )
    core.metrics.store_errors.inc()
    return False
