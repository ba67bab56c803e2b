"""Gateway settings: every option from the environment (``GATEWAY_`` prefix) or a ``.env`` file."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# API keys shorter than this are refused at start-up (an empty or short key is guessable).
MIN_API_KEY_CHARS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080

    # Triton (gRPC): where, which model, how long one call may take. ``triton_url`` may list several
    # endpoints, comma-separated (first = primary): a call that finds one down or without the model is
    # tried on the others (the launcher's blue/green model swap).
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "goemotions"
    triton_timeout_s: float = Field(default=5.0, gt=0)
    # The served model version comes from Triton with every answer; a probe refreshes it this often
    # (seconds; 0 = only at start-up, in /readyz and from answers).
    version_check_s: float = Field(default=2.0, ge=0)
    # When set, /readyz is 503 unless the served version starts with it (e.g. "student-3f2a9c1b7d10").
    expected_model_version: str | None = None

    # Input limits.
    max_texts: int = Field(default=32, ge=1, le=1024)
    max_text_chars: int = Field(default=5000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)

    # Overload: requests past this many in flight get 429 at once instead of queueing.
    max_concurrency: int = Field(default=64, ge=1)
    retry_after_s: int = Field(default=1, ge=1)
    # On SIGTERM, seconds of /readyz 503 ("draining") while requests are still served, before the
    # shutdown: the time a load balancer needs to stop sending here (0: stop at once; gateway/draining.py).
    shutdown_drain_s: float = Field(default=0.0, ge=0, le=3600)
    # Circuit breaker on the Triton client: open after this many failed calls in a row, probe again
    # after the cool-down.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    # After a Redis failure (result cache or learner store), that backend is left alone for this long
    # (requests are answered without it), then one request probes it (gateway/resilience.py).
    backend_retry_s: float = Field(default=5.0, gt=0)

    # Result cache and learner history: in-process by default, Redis when a URL is given.
    cache_backend: Literal["memory", "redis", "off"] = "memory"
    cache_size: int = Field(default=100_000, ge=1)
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    trajectory_backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # the result cache's Redis (allkeys-lru: it evicts under pressure)
    # The learner store's Redis, required when trajectory_backend is redis: a separate instance with
    # maxmemory-policy noeviction (and persistence), so cache traffic never evicts a learner's history.
    # Not a second database of the cache's instance: the eviction policy is per instance.
    learner_redis_url: str | None = None

    # Idempotency-Key: how long a keyed request's answer is kept for its retries, and (in process) how
    # many bytes of answers at most; they live where the learner store does (gateway/core/idempotency.py).
    # An hour covers a client's retries; every keyed request holds ~2 KB per text for that long in the
    # learner store's Redis, which never evicts (docs/deployment.md sizes it).
    idempotency_ttl_s: float = Field(default=3600.0, ge=1, le=7 * 86_400)
    idempotency_max_bytes: int = Field(default=50_000_000, ge=4096)

    # Tutor alerts (gateway/core/alerts.py): each tenant's webhook (JSON file; unset: no alerts), how long
    # a learner alerted once stays quiet unless their level rises, the queue, and the first retry's wait.
    alerts_file: Path | None = None
    alert_cooldown_s: float = Field(default=600.0, ge=0, le=86_400)
    alert_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    alert_retry_s: float = Field(default=1.0, gt=0, le=60)

    policy_file: Path | None = None  # None: gateway/learning/policy.toml
    # A folder of policy files, switchable while running: its `active` file names the version in use
    # (PUT /v1/policy writes it); every replica re-reads the folder every policy_check_s (0: never).
    policy_dir: Path | None = None
    policy_check_s: float = Field(default=5.0, ge=0)

    # Audit trail (off by default): one row per analysed text, written off the request path
    # (gateway/backends/audit).
    # Texts are stored as HMAC-SHA256 hashes under audit_hash_key (required unless audit_store_text).
    audit_backend: Literal["off", "sqlite", "postgres"] = "off"
    audit_sqlite_path: Path = REPO_ROOT / "build" / "audit.sqlite3"
    audit_dsn: SecretStr | None = None  # postgresql:// URI for the postgres backend (may hold a password)
    audit_store_text: bool = False
    audit_hash_key: SecretStr | None = None
    audit_retention_days: int = Field(default=90, ge=0, le=36_500)  # 0 keeps rows forever
    audit_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)  # rows waiting; more are dropped
    audit_batch_size: int = Field(default=500, ge=1, le=10_000)
    audit_flush_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Rate limits in `limits` notation ("600/minute", "10/second"; empty = off), per API key (per client
    # address when auth is off) and per tenant. Counted in Redis (GATEWAY_REDIS_URL) with
    # rate_limit_backend=redis, or auto with a Redis URL set: one limit across all replicas; else in
    # process memory: per replica. A Redis outage fails open (gateway/core/ratelimit.py).
    rate_limit: str = ""
    tenant_rate_limit: str = ""
    rate_limit_backend: Literal["auto", "memory", "redis"] = "auto"
    rate_limit_per_minute: int = Field(default=0, ge=0)  # older spelling of rate_limit="N/minute"
    # The API's own documentation: /docs, /redoc and /openapi.json served to anyone ("public"); only
    # /openapi.json, to a caller with a valid API key ("protected": any scope; the HTML pages are off, as
    # a browser cannot send the key when it fetches the document); or nothing ("off": a public deployment
    # need not publish its surface; the contract is docs/api.md and app.openapi()).
    api_docs: Literal["public", "protected", "off"] = "public"
    # Browser origins allowed by CORS; empty = CORS off (no CORS headers at all).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # API keys (gateway/core/tenants.py): auth is off while both are empty. The keys file is JSON and
    # holds each key's tenant, scopes and SHA-256 only (``python -m gateway keys create``). The plain
    # keys of GATEWAY_API_KEYS (kept for compatibility) are keys of the default tenant with every scope.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None

    # Streaming (WS /v1/emotions/stream), per connection: unanswered messages held (more are dropped
    # with an error frame), seconds without a frame before the server closes, the largest frame, and the
    # seconds a browser client has to send its first-frame API key.
    stream_queue_size: int = Field(default=16, ge=1, le=10_000)
    stream_idle_timeout_s: float = Field(default=300.0, gt=0)
    stream_max_message_bytes: int = Field(default=65_536, ge=1024)
    stream_auth_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("triton_url")
    @classmethod
    def _endpoints(cls, value: str) -> str:
        if not [u for u in value.split(",") if u.strip()]:
            raise ValueError("give at least one Triton gRPC endpoint (host:port), comma-separated")
        return value

    @field_validator("rate_limit", "tenant_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value.lower() not in ("", "0", "off"):
            from limits import parse  # ValueError on a malformed limit

            if parse(value).amount < 1:
                raise ValueError("a rate limit must admit at least one request")
        return value

    @field_validator("expected_model_version")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("alerts_file", mode="before")
    @classmethod
    def _blank_path_is_none(cls, value: object) -> object:
        # GATEWAY_ALERTS_FILE= (empty, as compose passes an unset variable) means no alerts, not "."
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # GATEWAY_API_KEYS="k1,k2" as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        # An empty key would let a request without a key in; a short one is guessable.
        for i, key in enumerate(value):
            if len(key.get_secret_value().strip()) < MIN_API_KEY_CHARS:
                raise ValueError(
                    f"GATEWAY_API_KEYS: key {i + 1} is empty or shorter than {MIN_API_KEY_CHARS} "
                    "characters; use long random keys (`python -m gateway keys create` makes one)"
                )
        return value

    def triton_urls(self) -> list[str]:
        """The Triton endpoints, primary first."""
        return list(dict.fromkeys(u.strip() for u in self.triton_url.split(",") if u.strip()))

    def key_rate_limit(self) -> str:
        """The per-key limit: rate_limit, else rate_limit_per_minute as "N/minute" ("" when off)."""
        if self.rate_limit:
            return self.rate_limit
        return f"{self.rate_limit_per_minute}/minute" if self.rate_limit_per_minute else ""

    def resolved_api_keys(self) -> list[str]:
        """The plain keys of GATEWAY_API_KEYS (the keys file is read by gateway.core.tenants)."""
        return [k.get_secret_value() for k in self.api_keys]


@lru_cache
def get_settings() -> Settings:
    return Settings()
