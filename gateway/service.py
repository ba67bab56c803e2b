"""The gateway's work, free of HTTP: validate texts, answer from the cache or one Triton call, add the
learning state and the learner's trajectory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from contract.names import GOEMOTIONS_LABELS, NEUTRAL
from contract.text import normalize
from gateway.breaker import BreakerInference
from gateway.cache import ResultCache, SingleFlight, cache_key
from gateway.errors import GatewayError
from gateway.learning.policy import Policy
from gateway.learning.state import LearnerContext, LearningState, assess
from gateway.learning.trajectory import TrajectoryPoint, TrajectoryStore, Trend, classify_trend
from gateway.metrics import Metrics
from gateway.ratelimit import SlidingWindowLimiter
from gateway.settings import Settings
from gateway.triton import Inference, InvalidModelOutput, Prediction, check_predictions

if TYPE_CHECKING:  # only the type: the audit package (and psycopg) loads when the app uses it
    from gateway.audit import AuditTrail

log = logging.getLogger(__name__)

# What a learner-store outage raises (Redis down or timing out); anything else is a bug and propagates.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, asyncio.TimeoutError)
STORE_RETRY_S = 5.0  # after a learner-store failure, answer without it for this long
# What the version probe sends Triton (short: the cheapest call that still runs the whole ensemble).
PROBE_TEXT = "model version probe"
# A request's texts answered by different model versions are asked again at most this often.
MAX_VERSION_ROUNDS = 3


@dataclass
class Scored:
    prediction: Prediction
    cached: bool
    primary_emotion: str  # the most probable of prediction.labels; neutral when there are none
    confidence: float  # primary_emotion's probability
    state: LearningState


@dataclass
class Outcome:
    results: list[Scored]
    inference_seconds: float
    all_cached: bool
    model_version: str  # the version every result came from (one per outcome)
    trend: Trend | None = None


@dataclass
class Core:
    """Everything the routes need, created once in the app's lifespan."""

    settings: Settings
    triton: Inference
    cache: ResultCache
    trajectories: TrajectoryStore
    policy: Policy
    metrics: Metrics
    api_keys: list[str]
    limiter: SlidingWindowLimiter | None = None
    # The latest model version Triton answered with (None until its first answer): the cache is read
    # under it. Answers carry their own version, and the cache is written under that.
    served_version: str | None = None
    # How often served_version changed: an answer to a call started before the latest change cannot
    # undo it (during a swap, the old model's last in-flight answers arrive after the new one's first).
    version_changes: int = 0
    # Until then the learner store is not asked (it failed); ``clock`` is the clock it is kept on.
    store_retry_at: float = 0.0
    clock: Callable[[], float] = time.monotonic
    flight: SingleFlight = field(default_factory=SingleFlight)
    inflight: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    audit: AuditTrail | None = None  # the audit trail, when GATEWAY_AUDIT_BACKEND is not off


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


def note_version(core: Core, version: str, since: int) -> bool:
    """Record the version Triton answered a call with, made when ``core.version_changes`` was ``since``;
    True when it became the served version. A call older than the latest change does not count."""
    old = core.served_version
    if version == old or since != core.version_changes:
        return False
    core.served_version = version
    core.version_changes += 1
    if old is None:
        log.info("serving model version %s", version)
    else:
        log.info("model swapped from %s to %s", old, version)
    return True


def _count_failure(core: Core, exc: GatewayError) -> None:
    if isinstance(exc, InvalidModelOutput):
        core.metrics.invalid_outputs.labels(exc.reason).inc()


async def probe_version(core: Core) -> str:
    """Ask Triton which model answers now (one fixed short text, past the cache and the circuit breaker:
    a probe is not traffic) and make it the served version. Raises the GatewayError of a failed or
    malformed answer."""
    client = core.triton.inner if isinstance(core.triton, BreakerInference) else core.triton
    since = core.version_changes
    try:
        predictions = await client.infer([PROBE_TEXT])
        check_predictions(predictions, 1)
    except GatewayError as exc:
        _count_failure(core, exc)
        raise
    version = predictions[0].model_version
    note_version(core, version, since)
    return version


async def watch_version(
    core: Core, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Probe the served version every ``interval_s`` until cancelled (the app's lifespan runs this)."""
    while True:
        await sleep(interval_s)
        try:
            await probe_version(core)
        except GatewayError as exc:  # Triton down or answering badly: requests will say so themselves
            log.debug("model version probe failed: %s", exc.message)
        except Exception:
            log.exception("model version probe failed")


async def _fetch(core: Core, texts: list[str], version: str | None) -> tuple[dict[str, Prediction], float]:
    """Answers from Triton for distinct ``texts`` (single-flight per version and text), cached under the
    version each answer carries."""
    text_of = {cache_key(version or "", t): t for t in texts}
    inference_seconds = 0.0

    async def compute(batch: list[str]) -> dict[str, Prediction]:
        nonlocal inference_seconds
        core.metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        since = core.version_changes
        try:
            predictions = await core.triton.infer([text_of[k] for k in batch])
        except GatewayError as exc:
            core.metrics.triton_errors.labels(exc.code).inc()
            _count_failure(core, exc)
            raise
        finally:
            inference_seconds = time.perf_counter() - started
            core.metrics.triton_latency.observe(inference_seconds)
        if predictions:
            # rows of one call share it (else: see predict)
            note_version(core, predictions[-1].model_version, since)
        computed = dict(zip(batch, predictions, strict=True))
        await core.cache.set_many({cache_key(p.model_version, text_of[k]): p for k, p in computed.items()})
        return computed

    fresh = await core.flight.run(list(text_of), compute)
    return {text_of[k]: p for k, p in fresh.items()}, inference_seconds


async def predict(core: Core, texts: list[str]) -> tuple[list[Prediction], list[bool], float]:
    """Model outputs for normalized texts, all from one model version: the cache (under the served
    version) first, then one Triton call for all misses. When that call answers with another version
    (the model was swapped), the texts answered under the old one are asked again."""
    if not texts:
        return [], [], 0.0
    version = core.served_version
    found: list[Prediction | None] = [None] * len(texts)
    if version is not None:  # before Triton's first answer there is no version to look up under
        found = await core.cache.get_many([cache_key(version, t) for t in texts])
        found = [hit if hit is not None and hit.model_version == version else None for hit in found]
    hits = sum(hit is not None for hit in found)
    core.metrics.cache.labels("hit").inc(hits)
    core.metrics.cache.labels("miss").inc(len(texts) - hits)
    cached = [hit is not None for hit in found]
    answers = list(found)
    todo = [i for i, hit in enumerate(found) if hit is None]
    inference_seconds = 0.0
    for _ in range(MAX_VERSION_ROUNDS):
        if todo:
            fresh, seconds = await _fetch(core, [texts[i] for i in todo], version)
            inference_seconds += seconds
            for i in todo:
                answers[i] = fresh[texts[i]]
        predictions = [a for a in answers if a is not None]
        versions = {p.model_version for p in predictions}
        if len(versions) == 1:
            return predictions, cached, inference_seconds
        # One response never mixes versions: ask again for what the latest version did not answer.
        version = core.served_version
        todo = [i for i, p in enumerate(predictions) if p.model_version != version]
        for i in todo:
            cached[i] = False
    raise GatewayError(
        "backend_unavailable",
        "the model version changed repeatedly while answering; retry shortly",
        {"Retry-After": "1"},
    )


def primary_emotion(prediction: Prediction) -> tuple[str, float]:
    """The most probable label among ``labels`` (those over their tuned thresholds), or ``neutral`` when
    there are none; and that label's probability."""
    probs = dict(zip(GOEMOTIONS_LABELS, prediction.probabilities, strict=True))
    primary = max(prediction.labels, key=probs.__getitem__) if prediction.labels else NEUTRAL
    return primary, probs[primary]


async def analyse(
    core: Core, texts: list[str], learner_id: str | None, context: LearnerContext | None
) -> Outcome:
    normalized = validate_texts(texts, core.settings)
    predictions, cached, inference_seconds = await predict(core, normalized)
    store_ok = learner_id is not None and core.clock() >= core.store_retry_at
    history: list[TrajectoryPoint] = []
    if store_ok and learner_id:
        try:
            history = await core.trajectories.history(learner_id)
        except STORE_ERRORS as exc:
            store_ok = _store_failed(core, exc)
    trend = classify_trend(history, core.policy) if store_ok else None
    results = []
    for prediction, was_cached in zip(predictions, cached, strict=True):
        probs = dict(zip(GOEMOTIONS_LABELS, prediction.probabilities, strict=True))
        primary, confidence = primary_emotion(prediction)
        state = assess(probs, core.policy, context, trend.label if trend else None)
        results.append(Scored(prediction, was_cached, primary, confidence, state))
        if learner_id and store_ok:
            point = TrajectoryPoint(
                time.time(),
                state.readiness_score,
                state.valence,
                state.intervention_level,
                primary,
                prediction.model_version,
            )
            try:
                await core.trajectories.append(learner_id, point)
            except STORE_ERRORS as exc:
                store_ok = _store_failed(core, exc)
                trend = None
                continue
            history.append(point)
            trend = classify_trend(history, core.policy)
    version = predictions[0].model_version if predictions else core.served_version or ""
    return Outcome(results, inference_seconds, all(cached), version, trend)


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
    """A learner store outage costs the trend, never the answer: log, count, carry on without it, and
    leave the store alone for STORE_RETRY_S (while it is down, requests must not each wait for it)."""
    log.warning(
        "learner history store unavailable (%s); answering without the trajectory", type(exc).__name__
    )
    core.metrics.store_errors.inc()
    core.store_retry_at = core.clock() + STORE_RETRY_S
    return False
