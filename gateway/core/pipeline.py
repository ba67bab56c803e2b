"""The analysis pipeline, free of HTTP: validate the texts → the result cache (under the served model
version) → one Triton call for the misses (single-flight) → the learning state → the learner's
trajectory → audit rows. ``Pipeline.analyse`` is the one entry point, under the gateway's concurrency
limit; the HTTP route and the stream share it. Collaborators are passed in, nothing is looked up."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract.names import NEUTRAL
from contract.text import normalize
from gateway.backends.audit.writer import AuditTrail
from gateway.backends.cache import ResultCache, cache_key
from gateway.backends.trajectory import StoreUnavailable, TrajectoryStore
from gateway.backends.triton import (
    GuardedInference,
    Inference,
    InvalidModelOutput,
    Prediction,
    check_predictions,
)
from gateway.core import audit
from gateway.core.alerts import Alerts
from gateway.core.analysis import AnalysedText, Analysis
from gateway.core.history import unknown_learner
from gateway.core.idempotency import Replays
from gateway.core.policies import PolicyBook
from gateway.core.singleflight import SingleFlight
from gateway.core.tenants import DEFAULT_TENANT, learner_key
from gateway.core.versions import ServedVersion
from gateway.errors import ErrorCode, GatewayError
from gateway.learning.baseline import learner_baseline
from gateway.learning.policy import Policy
from gateway.learning.state import LearnerContext, assess
from gateway.learning.trajectory import TrajectoryPoint, Trend, classify_trend
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)

# What the version probe sends Triton (short: the cheapest call that still runs the whole ensemble).
PROBE_TEXT = "model version probe"
# A request's texts answered by different model versions are asked again at most this often.
MAX_VERSION_ROUNDS = 3


@dataclass(frozen=True)
class Erased:
    """What erasing a learner removed."""

    trajectory_points: int
    audit_rows: int
    idempotent_responses: int = 0


@dataclass(frozen=True)
class Limits:
    """Input limits and the concurrency limit (past it: 429 at once instead of a queue)."""

    max_texts: int = 32
    max_text_chars: int = 5000
    max_concurrency: int = 64
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_texts, settings.max_text_chars, settings.max_concurrency, settings.retry_after_s
        )


def validate_texts(texts: Sequence[str], limits: Limits) -> list[str]:
    """Normalized texts, or a 422 naming the first text that breaks a limit."""
    if len(texts) > limits.max_texts:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            f"too many texts: {len(texts)}; send at most {limits.max_texts} per request",
        )
    out = []
    for i, raw in enumerate(texts):
        where = "text" if len(texts) == 1 else f"texts[{i}]"
        text = normalize(raw)
        if not text:
            raise GatewayError(ErrorCode.INVALID_REQUEST, f"{where} is empty; send some text to analyse")
        if len(text) > limits.max_text_chars:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"{where} has {len(text)} characters; the limit is {limits.max_text_chars}",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can carry lone surrogates ("\ud800"); they are not text and Triton cannot take them.
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"{where} contains an invalid unicode character (an unpaired surrogate)",
            ) from None
        out.append(text)
    return out


def primary_emotion(prediction: Prediction) -> tuple[str, float]:
    """The most probable GoEmotions label among ``labels`` (those over their tuned thresholds), or
    ``neutral`` when there are none; and that label's probability. Learning signals are not emotions."""
    probs = prediction.emotions
    labels = prediction.emotion_labels
    primary = max(labels, key=probs.__getitem__) if labels else NEUTRAL
    return primary, probs[primary]


def learner_context(context: Mapping[str, Any] | None) -> LearnerContext | None:
    """The request's context checked against the policy's ranges (a 422 names what is wrong)."""
    try:
        return LearnerContext(**context) if context else None
    except ValueError as exc:  # the policy's own range checks: still the client's input
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"context: {exc}") from None


class Pipeline:
    def __init__(
        self,
        *,
        triton: Inference,
        cache: ResultCache,
        trajectories: TrajectoryStore,
        policy: Policy | PolicyBook,
        metrics: Metrics,
        limits: Limits | None = None,
        audit_trail: AuditTrail | None = None,
        replays: Replays | None = None,
        alerts: Alerts | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.triton = triton
        self.cache = cache
        self.trajectories = trajectories
        # the learning-state policies by version; each analysis reads the active one once
        self.policies = policy if isinstance(policy, PolicyBook) else PolicyBook(policy, "given")
        self.metrics = metrics
        self.limits = limits or Limits()
        self.audit_trail = audit_trail
        self.replays = replays  # answers kept for Idempotency-Key retries (they hold learners' results)
        self.alerts = alerts  # tutor alert webhooks (None: none configured)
        self.served = ServedVersion()
        self.inflight = 0
        self._wall_clock = wall_clock  # trajectory point timestamps
        self._flight: SingleFlight[Prediction] = SingleFlight()

    @property
    def policy(self) -> Policy:
        """The active learning-state policy (it may change between two analyses, never within one)."""
        return self.policies.current

    # --- the one entry point --------------------------------------------------------------------

    async def analyse(
        self,
        texts: Sequence[str],
        learner_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        channel: str = "http",
        started: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Analysis:
        """Analyse ``texts`` (one request's) under the concurrency limit, and queue their audit rows.
        ``started`` (perf_counter) is when the request arrived, for the audit's latency; the learner is
        ``tenant``'s (the caller's)."""
        started = time.perf_counter() if started is None else started
        if self.inflight >= self.limits.max_concurrency:
            self.metrics.rejected.inc()
            raise GatewayError(
                ErrorCode.OVERLOADED,
                "too many requests in flight; retry shortly",
                {"Retry-After": str(self.limits.retry_after_s)},
            )
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            key = learner_key(tenant, learner_id) if learner_id else None
            policy = self.policies.current_for(tenant)
            analysis = await self._analyse(texts, key, learner_context(context), policy)
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        analysis.request_id = uuid.uuid4().hex
        analysis.policy_version = policy.identity
        analysis.context = {k: v for k, v in (context or {}).items() if v is not None} or None
        if self.audit_trail is not None:
            latency_s = time.perf_counter() - started
            audit.record(
                self.audit_trail, self.metrics, analysis, learner_id, texts, latency_s, channel, tenant
            )
        if self.alerts is not None:
            self.alerts.consider(analysis, tenant, learner_id)
        return analysis

    async def trajectory(self, tenant: str, learner_id: str) -> tuple[list[TrajectoryPoint], Trend]:
        """A tenant's learner's stored points and their trend; a 404 when there are none (also for
        another tenant's learner), a 503 while the learner store is unavailable."""
        try:
            points = await self.trajectories.history(learner_key(tenant, learner_id))
        except StoreUnavailable as exc:
            raise _store_unavailable(exc) from None
        if not points:
            raise unknown_learner(learner_id)
        return points, classify_trend(points, self.policies.current_for(tenant))

    async def erase(self, tenant: str, learner_id: str, key_id: str | None) -> Erased:
        """Remove a tenant's learner from the learner store and the audit trail, and record the erasure
        (without the learner id). Idempotent: erasing again removes nothing. A 503 while either store is
        unavailable (retry: what was removed stays removed)."""
        try:
            points = await self.trajectories.erase(learner_key(tenant, learner_id))
            replayable = await self.replays.erase(tenant, learner_id) if self.replays is not None else 0
        except StoreUnavailable as exc:
            raise _store_unavailable(exc) from None
        if self.alerts is not None:
            await self.alerts.forget(tenant, learner_id)
        rows = 0
        if self.audit_trail is not None:
            rows = await self.audit_trail.erase(tenant, learner_id, key_id, points)
        # no learner id in the log: only what an auditor needs
        log.info(
            "learner erased: tenant %s, key %s, %d points, %d audit rows, %d kept answers",
            tenant,
            key_id,
            points,
            rows,
            replayable,
        )
        return Erased(points, rows, replayable)

    # --- the served model version ---------------------------------------------------------------

    async def probe_version(self) -> str:
        """Ask Triton which model answers now (one fixed short text, past the cache and the circuit
        breaker: a probe is not traffic) and make it the served version. Raises the GatewayError of a
        failed or malformed answer."""
        client = self.triton.inner if isinstance(self.triton, GuardedInference) else self.triton
        since = self.served.changes
        try:
            predictions = await client.infer([PROBE_TEXT])
            check_predictions(predictions, 1)
        except GatewayError as exc:
            self._count_invalid(exc)
            raise
        version = predictions[0].model_version
        self.served.note(version, since)
        return version

    async def watch_version(
        self, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Probe the served version every ``interval_s`` until cancelled (the services run this)."""
        while True:
            await sleep(interval_s)
            try:
                await self.probe_version()
            except GatewayError as exc:  # Triton down or answering badly: requests will say so themselves
                log.debug("model version probe failed: %s", exc.message)
            except Exception:
                log.exception("model version probe failed")

    # --- the steps ------------------------------------------------------------------------------

    async def _analyse(
        self, texts: Sequence[str], learner_id: str | None, context: LearnerContext | None, policy: Policy
    ) -> Analysis:
        normalized = validate_texts(texts, self.limits)
        predictions, cached, inference_seconds = await self._predictions(normalized)
        store_ok = learner_id is not None
        history: list[TrajectoryPoint] = []
        if learner_id:
            try:
                history = await self.trajectories.history(learner_id)
            except StoreUnavailable:  # costs the trend, never the answer
                store_ok = False
        trend = classify_trend(history, policy) if store_ok else None
        results = []
        for prediction, was_cached in zip(predictions, cached, strict=True):
            primary, confidence = primary_emotion(prediction)
            baseline = learner_baseline(history, policy) if store_ok else None
            state = assess(
                prediction.by_label,
                policy,
                context,
                trend.label if trend else None,
                baseline,
                detected=prediction.labels,
            )
            results.append(AnalysedText(prediction, was_cached, primary, confidence, state))
            if learner_id and store_ok:
                point = TrajectoryPoint(
                    self._wall_clock(),
                    state.readiness_score,
                    state.valence,
                    state.intervention_level,
                    primary,
                    prediction.model_version,
                    state.arousal,
                    state.learning_emotions,
                )
                try:
                    await self.trajectories.append(learner_id, point)
                except StoreUnavailable:
                    store_ok, trend = False, None
                    continue
                history.append(point)
                trend = classify_trend(history, policy)
        version = predictions[0].model_version if predictions else self.served.version or ""
        return Analysis(results, inference_seconds, all(cached), version, trend)

    async def _predictions(self, texts: list[str]) -> tuple[list[Prediction], list[bool], float]:
        """Model outputs for normalized texts, all from one model version: the cache (under the served
        version) first, then one Triton call for all misses. When that call answers with another version
        (the model was swapped), the texts answered under the old one are asked again."""
        if not texts:
            return [], [], 0.0
        version = self.served.version
        found: list[Prediction | None] = [None] * len(texts)
        if version is not None:  # before Triton's first answer there is no version to look up under
            found = await self.cache.get_many([cache_key(version, t) for t in texts])
            found = [hit if hit is not None and hit.model_version == version else None for hit in found]
        hits = sum(hit is not None for hit in found)
        self.metrics.cache.labels("hit").inc(hits)
        self.metrics.cache.labels("miss").inc(len(texts) - hits)
        cached = [hit is not None for hit in found]
        answers = list(found)
        todo = [i for i, hit in enumerate(found) if hit is None]
        inference_seconds = 0.0
        for _ in range(MAX_VERSION_ROUNDS):
            if todo:
                fresh, seconds = await self._infer([texts[i] for i in todo], version)
                inference_seconds += seconds
                for i in todo:
                    answers[i] = fresh[texts[i]]
            predictions = [a for a in answers if a is not None]
            versions = {p.model_version for p in predictions}
            if len(versions) == 1:
                return predictions, cached, inference_seconds
            # One response never mixes versions: ask again for what the latest version did not answer.
            version = self.served.version
            todo = [i for i, p in enumerate(predictions) if p.model_version != version]
            for i in todo:
                cached[i] = False
        raise GatewayError(
            ErrorCode.BACKEND_UNAVAILABLE,
            "the model version changed repeatedly while answering; retry shortly",
            {"Retry-After": "1"},
        )

    async def _infer(self, texts: list[str], version: str | None) -> tuple[dict[str, Prediction], float]:
        """Answers from Triton for distinct ``texts`` (single-flight per version and text), cached under
        the version each answer carries."""
        text_of = {cache_key(version or "", t): t for t in texts}
        inference_seconds = 0.0

        async def compute(batch: list[str]) -> dict[str, Prediction]:
            nonlocal inference_seconds
            self.metrics.batch_size.observe(len(batch))
            started = time.perf_counter()
            since = self.served.changes
            try:
                predictions = await self.triton.infer([text_of[k] for k in batch])
            except GatewayError as exc:
                self.metrics.triton_errors.labels(exc.code).inc()
                self._count_invalid(exc)
                raise
            finally:
                inference_seconds = time.perf_counter() - started
                self.metrics.triton_latency.observe(inference_seconds)
            if predictions:  # rows of one call share it (else: see _predictions)
                self.served.note(predictions[-1].model_version, since)
            computed = dict(zip(batch, predictions, strict=True))
            await self.cache.set_many(
                {cache_key(p.model_version, text_of[k]): p for k, p in computed.items()}
            )
            return computed

        fresh = await self._flight.run(list(text_of), compute)
        return {text_of[k]: p for k, p in fresh.items()}, inference_seconds

    def _count_invalid(self, exc: GatewayError) -> None:
        if isinstance(exc, InvalidModelOutput):
            self.metrics.invalid_outputs.labels(exc.reason).inc()


def _store_unavailable(exc: StoreUnavailable) -> GatewayError:
    return GatewayError(
        ErrorCode.BACKEND_UNAVAILABLE,
        "the learner store is unavailable; retry later",
        {"Retry-After": str(exc.retry_after_s)},
    )
