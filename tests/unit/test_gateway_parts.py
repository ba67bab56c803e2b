"""Gateway pieces without HTTP: cache keys and TTL (fake clock), single-flight (events), Triton error
translation, settings."""

from __future__ import annotations

import asyncio
import json

import pytest
from tritonclient.utils import InferenceServerException

from contract.text import normalize
from gateway.backends.cache import MemoryCache, cache_key
from gateway.backends.triton import Prediction, _translate
from gateway.core.singleflight import SingleFlight
from gateway.settings import Settings
from server.probes import wait_for_async
from tests.support.gateway import FakeClock


def test_normalize_only_touches_what_cannot_change_the_answer():
    assert normalize("  Café \n") == "Café"
    assert normalize("Cafe\u0301") == "Café"  # NFD -> NFC: same characters, same tokens
    assert normalize("I  LOVE it") == "I  LOVE it"  # case and inner spaces are the model's business


def test_cache_key_includes_model_version():
    assert cache_key("v1", "hello") != cache_key("v2", "hello")
    assert cache_key("v1", "hello") == cache_key("v1", "hello")
    assert cache_key("v1", "a\0b") != cache_key("v1\0a", "b")


async def test_memory_cache_roundtrip_and_ttl():
    clock = FakeClock()
    cache = MemoryCache(maxsize=2, ttl_s=60, timer=clock)
    p = Prediction([0.1] * 28, ["joy"], "v1")
    await cache.set_many({"a": p})
    assert await cache.get_many(["a", "b"]) == [p, None]
    clock.advance(59.9)
    assert await cache.get_many(["a"]) == [p]
    clock.advance(0.1)
    assert await cache.get_many(["a"]) == [None]


async def test_single_flight_shares_one_computation():
    flight: SingleFlight[Prediction] = SingleFlight()
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def compute(keys: list[str]) -> dict[str, Prediction]:
        calls.append(keys)
        await release.wait()  # every caller joins while the first computation is still running
        return {k: Prediction([float(len(k))] * 28, [], "v1") for k in keys}

    runs = [asyncio.create_task(flight.run(keys, compute)) for keys in (["a", "b"], ["b", "c"], ["a"])]
    while len(calls) < 2:  # the first and second callers computing, the third waiting for "a"
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*runs)
    assert calls == [["a", "b"], ["c"]]  # b and a were already in flight
    assert results[1]["b"] is results[0]["b"]
    assert set(results[1]) == {"b", "c"} and set(results[2]) == {"a"}


async def test_single_flight_propagates_failure_to_waiters_and_forgets_it():
    flight: SingleFlight[Prediction] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def boom(keys: list[str]) -> dict[str, Prediction]:
        nonlocal calls
        calls += 1
        await release.wait()
        raise RuntimeError("triton down")

    first = asyncio.create_task(flight.run(["k"], boom))
    await asyncio.sleep(0)  # the first caller is computing
    second = asyncio.create_task(flight.run(["k"], boom))
    await asyncio.sleep(0)  # the second is waiting for the first
    release.set()
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes) and calls == 1

    async def ok(keys: list[str]) -> dict[str, Prediction]:
        return {k: Prediction([0.0] * 28, [], "v1") for k in keys}

    assert "k" in await flight.run(["k"], ok)  # the failure was not cached


async def test_a_cancelled_leader_leaves_its_waiters_to_compute_for_themselves():
    flight: SingleFlight[Prediction] = SingleFlight()
    calls: list[list[str]] = []

    async def compute(keys: list[str]) -> dict[str, Prediction]:
        calls.append(keys)
        if len(calls) == 1:
            await asyncio.Event().wait()  # the leader's call hangs until its caller goes away
        return {k: Prediction([float(len(k))] * 28, [], "v1") for k in keys}

    leader = asyncio.create_task(flight.run(["a", "bb"], compute))
    waiter = asyncio.create_task(flight.run(["bb"], compute))  # starts right after: waits for "bb"
    assert await wait_for_async(lambda: len(calls) == 1, 5)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    result = await waiter  # not the leader's CancelledError: the waiter computed "bb" itself
    assert result["bb"].probabilities[0] == 2.0
    assert calls == [["a", "bb"], ["bb"]]
    assert not waiter.cancelled()


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        ("StatusCode.INVALID_ARGUMENT", "invalid_request", False),
        ("StatusCode.DEADLINE_EXCEEDED", "backend_timeout", True),
        ("StatusCode.UNAVAILABLE", "backend_unavailable", True),
        ("StatusCode.NOT_FOUND", "backend_unavailable", True),
        ("StatusCode.INTERNAL", "backend_error", False),
    ],
)
def test_triton_errors_translate(status, code, retry):
    err = _translate(
        InferenceServerException("in ensemble 'goemotions', TEXT row 0 is empty", status=status), 2.0
    )
    assert err.code == code
    assert ("Retry-After" in err.headers) is retry
    if code == "invalid_request":
        assert err.message == "TEXT row 0 is empty"
    if code == "backend_timeout":
        assert "2 s" in err.message


def test_settings_from_environment(monkeypatch, tmp_path):
    alpha, beta = "key-alpha-1".ljust(32, "a"), "key-beta-2".ljust(32, "b")
    monkeypatch.setenv("GATEWAY_MAX_TEXTS", "8")
    monkeypatch.setenv("GATEWAY_API_KEYS", f"{alpha},{beta}")
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", str(tmp_path / "keys.json"))
    s = Settings(_env_file=None)
    assert s.max_texts == 8
    assert s.resolved_api_keys() == [alpha, beta]  # the keys file is read by gateway.core.tenants
    assert s.api_keys_file == tmp_path / "keys.json"
    assert "key-alpha" not in repr(s)  # secrets are not printed
    monkeypatch.setenv("GATEWAY_API_KEYS", f'["{alpha}"]')
    assert Settings(_env_file=None).resolved_api_keys() == [alpha]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    from tests.support.processes import free_port, start_redis, stop_process

    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis") / "redis.log")
    yield port
    stop_process(proc)


async def test_redis_cache_keeps_the_model_version_and_skips_what_it_cannot_read(redis_port):
    import redis.asyncio as aioredis

    from gateway.backends.cache import RedisCache

    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    cache = RedisCache(client, ttl_s=60, prefix="test:result:")
    p = Prediction([0.25] * 28, ["joy", "love"], "student-3f2a9c1b7d10-int8")
    await cache.set_many({"k": p})
    assert await cache.get_many(["k", "absent"]) == [p, None]
    # written by an older gateway (no model_version) or corrupt: a miss, never an error
    await client.set("test:result:old", json.dumps({"probabilities": [0.1] * 28, "labels": []}))
    await client.set("test:result:junk", b"\xff not json")
    assert await cache.get_many(["old", "junk", "k"]) == [None, None, p]
    await cache.close()


def test_triton_endpoints_and_version_settings(monkeypatch):
    monkeypatch.setenv("GATEWAY_TRITON_URL", "triton-blue:8001, triton-green:8001")
    monkeypatch.setenv("GATEWAY_EXPECTED_MODEL_VERSION", "  ")
    s = Settings(_env_file=None)
    assert s.triton_urls() == ["triton-blue:8001", "triton-green:8001"]
    assert s.version_check_s == 2.0 and s.expected_model_version is None
    # no labels file: label names come from contract.names, thresholds are Triton's
    assert "labels_file" not in Settings.model_fields
    monkeypatch.setenv("GATEWAY_TRITON_URL", " , ")
    with pytest.raises(ValueError, match="at least one Triton gRPC endpoint"):
        Settings(_env_file=None)
    with pytest.raises(ValueError):
        Settings(_env_file=None, triton_url="t:1", version_check_s=-1)
