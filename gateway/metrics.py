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
        self.batch_size = Histogram(
            "gateway_triton_batch_size",
            "Texts per Triton call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.inflight = Gauge("gateway_inflight_requests", "Inference requests in flight", registry=r)
        self.rejected = Counter(
            "gateway_overload_rejections", "Requests rejected with 429 (concurrency)", registry=r
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests rejected with 429 (rate limit)", registry=r
        )
