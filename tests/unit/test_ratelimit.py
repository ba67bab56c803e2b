"""The rate limiter (gateway/core/ratelimit.py) on the ``limits`` library: per key and per tenant, in memory
(per replica) or in a real Redis (one count for every limiter on it, as for gateway replicas), and fail
open when its Redis is down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from limits.aio.storage import MemoryStorage, RedisStorage

from gateway.backends.cache import redis_errors
from gateway.core.ratelimit import RateLimiter, describe, parse_limit, retry_after_header
from gateway.resilience import Breaker, State
from gateway.settings import Settings


def memory_limiter(per_key: str = "", per_tenant: str = "") -> RateLimiter:
    return RateLimiter(
        MemoryStorage(),
        Breaker("the rate limit's store"),
        per_key=parse_limit(per_key),
        per_tenant=parse_limit(per_tenant),
        shared=False,
    )


def test_limits_are_parsed_and_described():
    assert parse_limit("") is None and parse_limit("0") is None and parse_limit(" off ") is None
    assert describe(parse_limit("600/minute")) == "600 requests per minute"
    assert describe(parse_limit("10 per 2 seconds")) == "10 requests per 2 seconds"
    with pytest.raises(ValueError):
        parse_limit("lots")
    with pytest.raises(ValueError):
        parse_limit("0/minute")
    assert retry_after_header(0.2) == "1" and retry_after_header(30.0) == "30"


def test_settings_take_both_limits_and_the_older_per_minute_spelling():
    assert Settings(_env_file=None).key_rate_limit() == ""
    assert Settings(_env_file=None, rate_limit_per_minute=5).key_rate_limit() == "5/minute"
    both = Settings(_env_file=None, rate_limit="600/minute", tenant_rate_limit="6000/minute")
    assert (both.key_rate_limit(), both.tenant_rate_limit) == ("600/minute", "6000/minute")
    with pytest.raises(ValueError, match="rate limit string"):
        Settings(_env_file=None, rate_limit="600 a minute please")


async def test_at_most_the_limit_per_key_with_the_retry_after_of_the_oldest_request():
    limiter = memory_limiter("3/minute")
    assert [await limiter.check("key:a") for _ in range(3)] == [None, None, None]
    refusal = await limiter.check("key:a")
    assert refusal is not None and refusal.scope == "key"
    assert 0 < refusal.retry_after_s <= 60  # when the first of the three leaves the window
    assert refusal.message == "the rate limit of 3 requests per minute reached; retry later"
    assert await limiter.check("key:b") is None  # another key counts on its own
    assert (await limiter.check("key:a")) is not None  # refused requests do not free a slot


async def test_the_tenant_limit_counts_every_key_of_the_tenant():
    limiter = memory_limiter("10/minute", per_tenant="3/minute")
    admitted = [await limiter.check(f"key:acme/{i % 2}", "acme") is None for i in range(5)]
    assert admitted == [True, True, True, False, False]
    refusal = await limiter.check("key:acme/2", "acme")
    assert refusal is not None and refusal.scope == "tenant"
    assert "this tenant's rate limit of 3 requests per minute" in refusal.message
    assert await limiter.check("key:other/1", "other") is None  # other tenants are not affected


async def test_a_key_over_its_own_limit_does_not_use_up_its_tenants():
    limiter = memory_limiter("2/minute", per_tenant="3/minute")
    results = [await limiter.check("key:acme/noisy", "acme") for _ in range(5)]
    assert [r.scope if r else None for r in results] == [None, None, "key", "key", "key"]
    assert await limiter.check("key:acme/quiet", "acme") is None  # the tenant's third slot is still free


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class DownStorage(MemoryStorage):
    """A storage whose every call fails like a dead Redis."""

    calls = 0

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        DownStorage.calls += 1
        raise ConnectionError("connection refused")


async def test_an_unavailable_store_fails_open_counted_and_then_is_left_alone():
    clock = Clock()
    breaker = Breaker("the rate limit's Redis", reset_s=5, clock=clock)
    unchecked: list[int] = []
    limiter = RateLimiter(
        DownStorage(),
        breaker,
        per_key=parse_limit("1/minute"),
        shared=True,
        errors=redis_errors(),
        on_unchecked=lambda: unchecked.append(1),
    )
    DownStorage.calls = 0
    assert [await limiter.check("key:a") for _ in range(4)] == [None] * 4  # admitted, never a 5xx
    assert len(unchecked) == 4 and DownStorage.calls == 1  # the open circuit spared the store 3 calls
    assert breaker.state is State.OPEN
    clock.now += 5
    assert await limiter.check("key:a") is None and DownStorage.calls == 2  # one probe after the cool-down


async def test_a_bug_in_the_store_is_not_swallowed_as_an_outage():
    class Broken(MemoryStorage):
        async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
            raise KeyError("a bug")

    limiter = RateLimiter(
        Broken(), Breaker("x"), per_key=parse_limit("1/minute"), shared=True, errors=redis_errors()
    )
    with pytest.raises(KeyError):
        await limiter.check("key:a")


# ---- a real Redis: one count for every limiter on it ------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    from tests.support.processes import free_port, start_redis, stop_process

    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis") / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)


def redis_limiter(url: str, per_key: str) -> RateLimiter:
    storage = RedisStorage(f"async+{url}", implementation="redispy", key_prefix="test:ratelimit")
    return RateLimiter(
        storage,
        Breaker("the rate limit's Redis"),
        per_key=parse_limit(per_key),
        shared=True,
        errors=redis_errors(),
    )


async def test_limiters_on_one_redis_share_the_count_and_keep_no_api_key(redis_url):
    import redis.asyncio as aioredis

    replicas = [redis_limiter(redis_url, "10/minute") for _ in range(2)]
    admitted = sum([await replicas[i % 2].check("key:secret-api-key-123") is None for i in range(30)])
    assert admitted == 10  # not 10 per replica
    refusal = await replicas[1].check("key:secret-api-key-123")
    assert refusal is not None and 0 < refusal.retry_after_s <= 60
    client = aioredis.Redis.from_url(redis_url)
    keys = [k.decode() for k in await client.keys("test:ratelimit:*")]
    await client.aclose()
    assert keys and not any("secret-api-key" in k for k in keys)  # identifiers are hashed


async def test_limiters_in_process_memory_count_per_replica():
    # What the Redis storage fixes: two replicas with their own memory admit twice the limit.
    replicas = [memory_limiter("10/minute") for _ in range(2)]
    admitted = sum([await replicas[i % 2].check("key:a") is None for i in range(30)])
    assert admitted == 20
