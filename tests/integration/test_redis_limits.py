"""The gateway's Redis wiring against real redis-servers: the learner store in its own Redis (required,
never the cache's database; a full noeviction Redis is an outage of the store, not of the API), and rate
limits counted in Redis — one limit for two gateway processes — failing open when that Redis is down."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from gateway.app import create_app
from gateway.services import open_services
from server.gateway_process import gateway_command
from server.probes import metric
from server.stack import Stack, gateway_env
from tests.support.fake_triton import FakeTriton
from tests.support.gateway import error, make_settings, running
from tests.support.processes import free_port, redis_with

# ---- the learner store's own Redis -------------------------------------------------------------------


async def test_the_learner_store_needs_its_own_redis():
    cache = "redis://127.0.0.1:6379/0"
    without = make_settings(trajectory_backend="redis", cache_backend="redis", redis_url=cache)
    with pytest.raises(ValueError, match="GATEWAY_LEARNER_REDIS_URL is required"):
        async with open_services(without, FakeTriton()):
            pass
    shared = make_settings(
        trajectory_backend="redis", cache_backend="redis", redis_url=cache, learner_redis_url=cache
    )
    with pytest.raises(ValueError, match="names the result cache's Redis database"):
        async with open_services(shared, FakeTriton()):
            pass


@pytest.mark.parametrize(("policy", "evicting"), [("noeviction", 0), ("allkeys-lru", 1)])
async def test_an_evicting_learner_redis_is_reported(tmp_path, caplog, policy, evicting):
    with redis_with(tmp_path, "maxmemory-policy", policy) as url:
        settings = make_settings(trajectory_backend="redis", learner_redis_url=url)
        async with open_services(settings, FakeTriton()) as services:
            assert services.metrics.learner_store_evicting._value.get() == evicting
    warned = any("may evict learners' histories" in r.getMessage() for r in caplog.records)
    assert warned == bool(evicting)


async def test_a_full_learner_store_costs_the_trajectory_not_the_answer(tmp_path):
    # noeviction at maxmemory: Redis refuses every write (OOM); histories already stored stay.
    with redis_with(tmp_path, "maxmemory-policy", "noeviction") as url:
        settings = make_settings(trajectory_backend="redis", learner_redis_url=url, backend_retry_s=30)
        async with running(settings, FakeTriton()) as (client, _):
            body = {"text": "I get it now", "learner_id": "learner-1"}
            assert (await client.post("/v1/emotions", json=body)).json()["trend"]["points"] == 1
            redis.Redis.from_url(url).config_set("maxmemory", "1")  # full
            r = await client.post("/v1/emotions", json=body)
            assert r.status_code == 200 and r.json()["trend"] is None  # answered without the trajectory
            t = await client.get("/v1/learners/learner-1/trajectory")
            assert t.status_code == 503 and 1 <= int(t.headers["retry-after"]) <= 30
            assert error(t)["code"] == "backend_unavailable"
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "gateway_store_errors_total") == 1
            assert redis.Redis.from_url(url).keys("*")  # nothing was evicted


# ---- rate limits in Redis ----------------------------------------------------------------------------


async def test_a_rate_limit_redis_outage_fails_open_and_is_counted():
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(cache_backend="memory", redis_url=dead, rate_limit="1/minute")
    async with running(settings, FakeTriton()) as (client, _):
        statuses = [(await client.post("/v1/emotions", json={"text": f"t{i}"})).status_code for i in range(3)]
        assert statuses == [200, 200, 200]  # a limit it cannot count never fails the API
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "gateway_rate_limit_unchecked_total") == 4  # /metrics is limited too
        assert metric(metrics, "gateway_rate_limited_total") == 0


async def test_the_tenant_limit_counts_every_key_of_the_tenant_over_http(tmp_path):
    from gateway.core.tenants import create_key

    keys_file = tmp_path / "keys.json"
    acme = [create_key(keys_file, "acme", ["analyse"], key_id=f"acme-{i}")[1] for i in range(2)]
    _, other = create_key(keys_file, "other", ["analyse"], key_id="other-1")
    settings = make_settings(api_keys_file=keys_file, rate_limit="10/minute", tenant_rate_limit="3/minute")
    async with running(settings, FakeTriton()) as (client, _):
        statuses = [
            (await client.post("/v1/emotions", json={"text": f"t{i}"}, headers={"x-api-key": acme[i % 2]}))
            for i in range(4)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]  # two keys, one tenant budget
        assert "this tenant's rate limit of 3 requests per minute" in error(statuses[3])["message"]
        assert 1 <= int(statuses[3].headers["retry-after"]) <= 60
        r = await client.post("/v1/emotions", json={"text": "x"}, headers={"x-api-key": other})
        assert r.status_code == 200  # another tenant has its own budget


async def test_the_rate_limit_is_in_memory_per_replica_unless_redis_is_configured(tmp_path):
    settings = make_settings(rate_limit="5/minute")
    assert not (await _limiter_of(settings)).shared
    with redis_with(tmp_path) as url:
        assert (await _limiter_of(make_settings(rate_limit="5/minute", redis_url=url))).shared
        memory = make_settings(rate_limit="5/minute", redis_url=url, rate_limit_backend="memory")
        assert not (await _limiter_of(memory)).shared


async def _limiter_of(settings):
    app = create_app(settings, FakeTriton())
    async with app.router.lifespan_context(app):
        limiter = app.state.services.limiter
    assert limiter is not None
    return limiter


LIMIT = 20  # per minute: every request of the test falls in one window
KEY = "k" * 40


def admitted_across_two_gateways(tmp_path: Path, rate_limit_backend: str) -> int:
    """Two ``python -m gateway`` processes on one Redis, a limit of LIMIT per minute per key, 3 x LIMIT
    requests alternating between them: how many were admitted. Triton is absent: an admitted request is
    answered 503 (backend unavailable), a refused one 429 before any backend is asked."""
    with redis_with(tmp_path) as url, Stack(tmp_path) as stack:
        settings = {
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_RATE_LIMIT": f"{LIMIT}/minute",
            "GATEWAY_REDIS_URL": url,
            "GATEWAY_RATE_LIMIT_BACKEND": rate_limit_backend,
            "GATEWAY_VERSION_CHECK_S": "0",
        }
        dead_triton = f"127.0.0.1:{free_port()}"
        urls = [
            stack.start_service(
                f"gateway-{i}",
                lambda port: gateway_command("127.0.0.1", port, dead_triton),
                env=gateway_env(settings),
                ready_timeout_s=60,
            ).url
            for i in range(2)
        ]
        with httpx.Client(timeout=30, headers={"x-api-key": KEY}) as client:
            statuses = [
                client.post(f"{urls[i % 2]}/v1/emotions", json={"text": f"t{i}"}).status_code
                for i in range(3 * LIMIT)
            ]
    assert set(statuses) <= {429, 503}, statuses
    return sum(s != 429 for s in statuses)


def test_two_gateway_processes_on_one_redis_admit_the_limit_once(tmp_path):
    # The moving window in Redis is exact: no tolerance to allow.
    assert admitted_across_two_gateways(tmp_path, "redis") == LIMIT


def test_gateway_processes_counting_in_memory_admit_the_limit_each(tmp_path):
    # The negative control (and what the docs say of the memory storage): per replica, so twice the limit.
    assert admitted_across_two_gateways(tmp_path, "memory") == 2 * LIMIT
