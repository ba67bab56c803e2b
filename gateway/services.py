"""Every service the routers use, built in order and closed in reverse: ``open_services`` is the one
place that does it (the app's lifespan enters it; tests may too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from limits.aio.storage import MemoryStorage, RedisStorage
from redis.asyncio import Redis

from gateway.backends.audit.store import PostgresStore, SqliteStore
from gateway.backends.audit.writer import AuditTrail
from gateway.backends.cache import GuardedCache, MemoryCache, NoCache, RedisCache, ResultCache, redis_errors
from gateway.backends.replays import GuardedReplayStore, MemoryReplayStore, RedisReplayStore, ReplayStore
from gateway.backends.trajectory import (
    GuardedTrajectoryStore,
    MemoryTrajectoryStore,
    RedisTrajectoryStore,
    TrajectoryStore,
)
from gateway.backends.triton import GuardedInference, Inference, TritonClient
from gateway.backends.webhooks import (
    Cooldown,
    GuardedCooldown,
    MemoryCooldown,
    RedisCooldown,
    WebhookSender,
)
from gateway.core.alerts import Alerts, read_hooks
from gateway.core.idempotency import Replays
from gateway.core.pipeline import Limits, Pipeline
from gateway.core.policies import PolicyBook
from gateway.core.ratelimit import RateLimiter, parse_limit
from gateway.core.tenants import Keyring, keyring_from
from gateway.errors import GatewayError
from gateway.learning.policy import DEFAULT_POLICY_PATH, Policy, load_policy
from gateway.metrics import Metrics
from gateway.resilience import Breaker
from gateway.settings import Settings

log = logging.getLogger(__name__)

# HMAC keys shorter than this are guessable; a hex-encoded 128-bit secret is 32 characters.
MIN_HASH_KEY_CHARS = 16


@dataclass
class Services:
    """What the routers need, built once per app (``open_services``)."""

    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    api_keys: Keyring  # empty: auth is off (gateway/core/tenants.py)
    replays: Replays  # Idempotency-Key answers (gateway/core/idempotency.py)
    limiter: RateLimiter | None = None
    audit_trail: AuditTrail | None = None  # None when GATEWAY_AUDIT_BACKEND=off


def audit_trail_from(
    settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic
) -> AuditTrail | None:
    """The configured audit trail, or None when it is off. Raises ValueError on an unusable setup."""
    if settings.audit_backend == "off":
        return None
    key = settings.audit_hash_key.get_secret_value() if settings.audit_hash_key else ""
    if not key and not settings.audit_store_text:
        # A random per-process key would make hashes incomparable across restarts and replicas, and
        # an unkeyed hash of a short text is reversed by hashing guesses: refuse instead.
        raise ValueError(
            "GATEWAY_AUDIT_HASH_KEY is required when the audit trail is on and GATEWAY_AUDIT_STORE_TEXT "
            "is false (texts are recorded as HMAC-SHA256 hashes); set a random secret, e.g. "
            "`openssl rand -hex 32`"
        )
    if key and len(key) < MIN_HASH_KEY_CHARS:
        raise ValueError(f"GATEWAY_AUDIT_HASH_KEY is too short; use at least {MIN_HASH_KEY_CHARS} characters")
    store: SqliteStore | PostgresStore
    if settings.audit_backend == "sqlite":
        store = SqliteStore(settings.audit_sqlite_path)
    else:
        if settings.audit_dsn is None or not settings.audit_dsn.get_secret_value():
            raise ValueError(
                "GATEWAY_AUDIT_DSN (a postgresql:// URI) is required when GATEWAY_AUDIT_BACKEND=postgres"
            )
        store = PostgresStore(settings.audit_dsn.get_secret_value())
    return AuditTrail(
        store,
        metrics,
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_interval_s=settings.audit_flush_interval_s,
        retention_days=settings.audit_retention_days,
        store_text=settings.audit_store_text,
        hash_key=key.encode() if key else None,
        clock=clock,
    )


def _rate_limited(settings: Settings) -> bool:
    return bool(settings.key_rate_limit() or settings.tenant_rate_limit)


def _rate_limit_in_redis(settings: Settings) -> bool:
    if settings.rate_limit_backend == "auto":
        return bool(settings.redis_url)
    return settings.rate_limit_backend == "redis"


def _connect(url: str) -> Redis:
    # Short timeouts: a dead Redis must cost a request milliseconds, not seconds (it degrades to no cache).
    return Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def _redis(settings: Settings) -> Redis | None:
    """The result cache's Redis (GATEWAY_REDIS_URL), also where the rate limits count."""
    if settings.cache_backend != "redis" and not (_rate_limited(settings) and _rate_limit_in_redis(settings)):
        return None
    if not settings.redis_url:
        raise ValueError(
            "GATEWAY_REDIS_URL is required when the cache backend or the rate limit backend is 'redis'"
        )
    return _connect(settings.redis_url)


def _database(url: str) -> tuple[str, int, int]:
    """(host, port, database index) of a redis:// URL."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return (parts.hostname or "localhost", parts.port or 6379, int(path) if path.isdigit() else 0)


def _learner_redis(settings: Settings) -> Redis | None:
    """The learner store's Redis (GATEWAY_LEARNER_REDIS_URL): never the cache's, which evicts."""
    if settings.trajectory_backend != "redis":
        return None
    url = settings.learner_redis_url
    if not url:
        raise ValueError(
            "GATEWAY_LEARNER_REDIS_URL is required when GATEWAY_TRAJECTORY_BACKEND=redis: a Redis with "
            "maxmemory-policy noeviction, apart from the result cache's (GATEWAY_REDIS_URL evicts under "
            "cache pressure; a second database of the same instance is evicted too)"
        )
    if settings.redis_url and settings.cache_backend == "redis":
        learners, cache = _database(url), _database(settings.redis_url)
        if learners == cache:
            raise ValueError(
                "GATEWAY_LEARNER_REDIS_URL names the result cache's Redis database: cache traffic would "
                "evict learners' histories; give the learner store its own Redis "
                "(maxmemory-policy noeviction)"
            )
        if learners[:2] == cache[:2]:
            log.warning(
                "the learner store uses another database of the result cache's Redis instance: its "
                "maxmemory-policy applies to both, so unless it is noeviction, cache traffic evicts histories"
            )
    return _connect(url)


async def _check_eviction(redis: Redis, metrics: Metrics) -> None:
    """Warn (and say so in ``gateway_learner_store_evicting``) when the learner store's Redis may evict."""
    try:
        policy = str((await redis.info("memory")).get("maxmemory_policy", ""))
    except redis_errors() as exc:
        metrics.learner_store_evicting.set(-1)
        log.warning(
            "could not read the learner store's maxmemory-policy at start-up (%s)", type(exc).__name__
        )
        return
    evicting = policy != "noeviction"
    metrics.learner_store_evicting.set(int(evicting))
    if evicting:
        log.warning(
            "the learner store's Redis has maxmemory-policy %s: it may evict learners' histories; run it "
            "with --maxmemory-policy noeviction (docs/deployment.md)",
            policy or "unknown",
        )


def _cache(
    settings: Settings, redis: Redis | None, metrics: Metrics, clock: Callable[[], float]
) -> ResultCache:
    if redis is not None and settings.cache_backend == "redis":
        breaker = Breaker("the Redis cache", reset_s=settings.backend_retry_s, clock=clock)
        return GuardedCache(
            RedisCache(redis, settings.cache_ttl_s),
            breaker,
            redis_errors(),
            on_error=metrics.cache_errors.inc,
        )
    if settings.cache_backend == "memory":
        return MemoryCache(settings.cache_size, settings.cache_ttl_s, timer=clock)
    return NoCache()


def _trajectories(
    settings: Settings, redis: Redis | None, metrics: Metrics, policy: Policy, clock: Callable[[], float]
) -> TrajectoryStore:
    """``redis`` is the learner store's own Redis (``_learner_redis``)."""
    if redis is not None and settings.trajectory_backend == "redis":
        breaker = Breaker("the learner store", reset_s=settings.backend_retry_s, clock=clock)
        return GuardedTrajectoryStore(
            RedisTrajectoryStore(redis, policy), breaker, redis_errors(), on_error=metrics.store_errors.inc
        )
    return MemoryTrajectoryStore(policy, timer=clock)


def _replay_store(settings: Settings, redis: Redis | None, clock: Callable[[], float]) -> ReplayStore:
    """Where keyed requests' answers are kept: beside the learner store (its Redis, noeviction, shared by
    every replica), else in process."""
    if redis is not None and settings.trajectory_backend == "redis":
        breaker = Breaker("the idempotency store", reset_s=settings.backend_retry_s, clock=clock)
        # its failures are counted as gateway_idempotent_requests{outcome="unavailable"}
        return GuardedReplayStore(RedisReplayStore(redis), breaker, redis_errors())
    return MemoryReplayStore(settings.idempotency_max_bytes, timer=clock)


def _cooldown(settings: Settings, redis: Redis | None, clock: Callable[[], float]) -> Cooldown:
    """The tutor alerts' cool-down: in the learner store's Redis (one for every replica), else per replica."""
    if redis is not None and settings.trajectory_backend == "redis":
        breaker = Breaker("the alert cool-down", reset_s=settings.backend_retry_s, clock=clock)
        return GuardedCooldown(RedisCooldown(redis, settings.alert_cooldown_s), breaker, redis_errors())
    return MemoryCooldown(settings.alert_cooldown_s, clock)


def _limiter(
    settings: Settings, redis: Redis | None, metrics: Metrics, clock: Callable[[], float]
) -> RateLimiter | None:
    """The per-key and per-tenant rate limits: counted in the cache's Redis (shared by every replica) when
    configured so, else in process memory (per replica); None when both limits are off."""
    per_key, per_tenant = parse_limit(settings.key_rate_limit()), parse_limit(settings.tenant_rate_limit)
    if per_key is None and per_tenant is None:
        return None
    breaker = Breaker("the rate limit's Redis", reset_s=settings.backend_retry_s, clock=clock)
    if redis is not None and settings.redis_url and _rate_limit_in_redis(settings):
        storage = RedisStorage(
            f"async+{settings.redis_url}",
            implementation="redispy",
            key_prefix="goemotions:ratelimit",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # the cache's connections
        )
        return RateLimiter(
            storage,
            breaker,
            per_key=per_key,
            per_tenant=per_tenant,
            shared=True,
            errors=redis_errors(),
            on_unchecked=metrics.rate_limit_unchecked.inc,
        )
    return RateLimiter(MemoryStorage(), breaker, per_key=per_key, per_tenant=per_tenant, shared=False)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, triton: Inference | None = None, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[Services]:
    """Build every service (policy, metrics, audit trail, Redis, cache, learner store, Triton client
    behind its breaker, pipeline, rate limit), start the audit writer, learn the served model version
    and start its background check; on exit close them in reverse order. ``triton`` replaces the gRPC
    client (tests pass a fake); ``clock`` is the monotonic clock every breaker, TTL and rate window runs
    on (tests pass a fake one and move it instead of sleeping)."""
    # Fail at start-up, with the file's own error message, rather than on the first request.
    metrics = Metrics()
    policy = load_policy(settings.policy_file)
    policies = PolicyBook(
        policy,
        str(settings.policy_file or DEFAULT_POLICY_PATH),
        settings.policy_dir,
        on_switch=metrics.note_policy,
        on_error=metrics.policy_errors.inc,
    )
    policy = policies.current
    keyring = keyring_from(settings)
    audit_trail = audit_trail_from(settings, metrics, clock)
    async with contextlib.AsyncExitStack() as stack:
        redis = _redis(settings)
        cache = _cache(settings, redis, metrics, clock)
        if redis is not None and settings.cache_backend != "redis":
            stack.push_async_callback(redis.aclose)  # else the cache closes it
        stack.push_async_callback(cache.close)
        learner_redis = _learner_redis(settings)
        if learner_redis is not None:
            stack.push_async_callback(learner_redis.aclose)
            await _check_eviction(learner_redis, metrics)
        trajectories = _trajectories(settings, learner_redis, metrics, policy, clock)
        replay_store = _replay_store(settings, learner_redis, clock)
        replays = Replays(replay_store, settings.idempotency_ttl_s, metrics)
        breaker = Breaker(
            "the model server",
            settings.breaker_failures,
            settings.breaker_reset_s,
            clock=clock,
            on_change=lambda state: metrics.circuit_state.set(state.value),
        )
        client = GuardedInference(
            triton or TritonClient(settings.triton_urls(), settings.triton_model, settings.triton_timeout_s),
            breaker,
            on_reject=metrics.circuit_rejections.inc,
        )
        stack.push_async_callback(client.close)
        alerts = None
        if settings.alerts_file is not None:
            hooks = read_hooks(settings.alerts_file)
            sender = WebhookSender(
                metrics,
                _cooldown(settings, learner_redis, clock),
                queue_size=settings.alert_queue_size,
                backoff_s=settings.alert_retry_s,
                clock=clock,
            )
            alerts = Alerts(hooks, sender)
            await sender.start()
            stack.push_async_callback(sender.stop)  # sends what is queued, within a bounded time
        pipeline = Pipeline(
            triton=client,
            cache=cache,
            trajectories=trajectories,
            policy=policies,
            metrics=metrics,
            limits=Limits.from_settings(settings),
            audit_trail=audit_trail,
            replays=replays,
            alerts=alerts,
        )
        limiter = _limiter(settings, redis, metrics, clock)
        services = Services(settings, metrics, pipeline, keyring, replays, limiter, audit_trail)
        if audit_trail is not None:
            await audit_trail.start()
            stack.push_async_callback(audit_trail.stop)  # writes what is queued, within a bounded time
        try:
            await pipeline.probe_version()
        except GatewayError as exc:  # Triton down: start anyway, the version comes with its first answer
            log.warning("could not learn the served model version at start-up: %s", exc.message)
        except Exception:
            log.exception("could not learn the served model version at start-up")
        if settings.version_check_s > 0:
            watcher = asyncio.create_task(
                pipeline.watch_version(settings.version_check_s), name="model-version-check"
            )
            stack.push_async_callback(_cancel, watcher)
        if policies.switchable and settings.policy_check_s > 0:
            policy_watcher = asyncio.create_task(
                policies.watch(settings.policy_check_s), name="policy-folder-check"
            )
            stack.push_async_callback(_cancel, policy_watcher)
        log.info(
            "gateway ready: model %s (%s), Triton %s, cache %s, auth %s, policy %s",
            settings.triton_model,
            pipeline.served.version or "version not known yet",
            settings.triton_url,
            settings.cache_backend,
            "on" if services.api_keys else "off",
            policies.active.version,
        )
        if limiter is not None:
            log.info(
                "rate limits: %s per key, %s per tenant, counted %s",
                settings.key_rate_limit() or "none",
                settings.tenant_rate_limit or "none",
                limiter.where,
            )
        yield services


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
