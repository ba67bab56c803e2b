"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter("gateway_cache_lookups", "Result cache lookups per text", ["result"], registry=r)
        self.cache_errors = Counter(
            "gateway_cache_errors", "Cache backend failures (served without cache)", registry=r
        )
        self.store_errors = Counter(
            "gateway_store_errors", "Learner store failures (served without trajectory)", registry=r
        )
        self.triton_latency = Histogram(
            "gateway_triton_duration_seconds", "Triton call latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.triton_errors = Counter("gateway_triton_errors", "Failed Triton calls", ["code"], registry=r)
        self.invalid_outputs = Counter(
            "gateway_invalid_model_outputs",
            "Triton answers refused as invalid (never cached or served), by reason: missing_output, "
            "shape, non_finite, out_of_range, unknown_label, missing_version",
            ["reason"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "gateway_circuit_state", "Triton circuit breaker: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.circuit_rejections = Counter(
            "gateway_circuit_rejections", "Requests answered 503 by the open circuit", registry=r
        )
        self.batch_size = Histogram(
            "gateway_triton_batch_size",
            "Texts per Triton call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.policy_active = Gauge(
            "gateway_policy_active",
            "1 for the learning-state policy version analyses use now",
            ["version"],
            registry=r,
        )
        self.policy_errors = Counter(
            "gateway_policy_errors",
            "Policy files or active pointers refused while running (the active policy stayed)",
            registry=r,
        )
        self.inflight = Gauge("gateway_inflight_requests", "Inference requests in flight", registry=r)
        self.rejected = Counter(
            "gateway_overload_rejections", "Requests rejected with 429 (concurrency)", registry=r
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests rejected with 429 (rate limit)", registry=r
        )
        self.rate_limit_unchecked = Counter(
            "gateway_rate_limit_unchecked",
            "Requests admitted without a rate-limit check: the limiter's Redis was unavailable (fail open)",
            registry=r,
        )
        self.idempotent_requests = Counter(
            "gateway_idempotent_requests",
            "Requests with an Idempotency-Key, by what happened: first (ran, answer kept), replayed, "
            "in_progress (409), key_reused (422), unavailable (503: the store was down), unsaved (ran, "
            "answer not kept)",
            ["outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "gateway_alerts",
            "Tutor alert webhooks by what happened: sent, failed (every attempt), dropped (queue full or "
            "shutdown), suppressed (cool-down), erased (the learner was erased while it was queued)",
            ["outcome"],
            registry=r,
        )
        self.learner_store_evicting = Gauge(
            "gateway_learner_store_evicting",
            "1 when the learner store's Redis may evict histories (maxmemory-policy is not noeviction), "
            "0 when it may not; -1 when it could not be asked at start-up",
            registry=r,
        )
        self.audit_written = Counter("gateway_audit_written", "Audit rows written", registry=r)
        self.audit_dropped = Counter(
            "gateway_audit_dropped",
            "Audit rows not written, by reason: queue_full, db_error, shutdown, internal",
            ["reason"],
            registry=r,
        )
        self.audit_deleted = Counter(
            "gateway_audit_deleted", "Audit rows deleted by the retention setting", registry=r
        )
        self.audit_queue_depth = Gauge(
            "gateway_audit_queue_depth", "Audit rows waiting to be written", registry=r
        )
        self.stream_connections = Gauge(
            "gateway_stream_connections", "Open streaming (WebSocket) connections", registry=r
        )
        self.stream_messages = Counter(
            "gateway_stream_messages",
            "Streaming messages by outcome: ok, an error code, or queue_full",
            ["outcome"],
            registry=r,
        )
        self.stream_latency = Histogram(
            "gateway_stream_message_duration_seconds",
            "Streaming message receipt to answer (queue wait included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_closes = Counter(
            "gateway_stream_closes",
            "Streaming connections ended, by reason: client, idle_timeout, unauthorized, error",
            ["reason"],
            registry=r,
        )

    def note_policy(self, version: str) -> None:
        """Only the active version reads 1."""
        self.policy_active.clear()
        self.policy_active.labels(version).set(1)
