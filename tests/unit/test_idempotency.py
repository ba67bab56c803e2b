"""The idempotency record's parts: the request fingerprint and the in-process store (claim, keep, release,
expiry on its own clock, its size bound, erasure by learner)."""

from __future__ import annotations

from gateway.backends.replays import RECORD_OVERHEAD_BYTES, MemoryReplayStore, Record
from gateway.core.idempotency import fingerprint, scoped
from tests.support.gateway import FakeClock


def test_a_fingerprint_is_the_route_and_the_json_whatever_its_key_order():
    assert fingerprint("POST /a", {"x": 1, "y": [1, 2]}) == fingerprint("POST /a", {"y": [1, 2], "x": 1})
    assert fingerprint("POST /a", {"x": 1}) != fingerprint("POST /b", {"x": 1})
    assert fingerprint("POST /a", {"y": [1, 2]}) != fingerprint("POST /a", {"y": [2, 1]})


def test_a_scope_is_the_tenant_and_the_key_without_ambiguity():
    assert scoped("acme", "k") != scoped("beta", "k")
    assert scoped("ab", "c") != scoped("a", "bc")


async def test_the_memory_store_claims_once_keeps_releases_and_expires():
    clock = FakeClock()
    store = MemoryReplayStore(max_bytes=10_000, timer=clock)
    pending = Record("f", "pending")
    assert await store.claim("k", pending, ttl_s=5) is None
    assert await store.claim("k", Record("g", "pending"), ttl_s=5) == pending  # held: the first claim
    clock.advance(5)
    assert await store.claim("k", pending, ttl_s=5) is None  # an abandoned claim expires
    done = Record("f", "done", 200, "{}", "acme:ada")
    await store.keep("k", done, ttl_s=60)
    clock.advance(59)
    assert await store.claim("k", pending, ttl_s=5) == done
    await store.release("k")
    assert await store.claim("k", pending, ttl_s=5) is None


async def test_the_memory_store_is_bounded_by_bytes_and_erases_by_learner():
    store = MemoryReplayStore(max_bytes=2 * (RECORD_OVERHEAD_BYTES + 2), timer=FakeClock())  # two answers
    for key, learner in (("a", "acme:ada"), ("b", "acme:bob"), ("c", "acme:ada")):
        await store.keep(key, Record("f", "done", 200, "{}", learner), ttl_s=60)
    assert await store.erase("acme:ada") == 1  # "c": "a", the oldest, went when "c" came
    assert await store.erase("acme:ada") == 0
    assert (await store.claim("b", Record("f", "pending"), ttl_s=5)) == Record(
        "f", "done", 200, "{}", "acme:bob"
    )
    assert await store.claim("a", Record("f", "pending"), ttl_s=5) is None
    await store.keep("a", Record("f", "done", 200, "x" * 10_000, None), ttl_s=60)  # larger than the store
    assert await store.claim("a", Record("f", "pending"), ttl_s=5) is None
