"""``Idempotency-Key`` through the in-process gateway: a retry gets the first answer (one analysis, one
trajectory point, one audit row, one outcome), a key is the caller's tenant's, refused while its first
request runs or when sent with another body, forgotten after its TTL, after a failure and with the
learner; in Redis, one key across two gateways, and a Redis outage is a 503, never a second analysis."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from gateway.core.idempotency import scoped
from gateway.core.tenants import Scope, create_key
from gateway.errors import ErrorCode, GatewayError
from tests.support.fake_triton import WAIT_S, FakeTriton
from tests.support.gateway import KEY, FakeClock, error, make_settings, metric, running
from tests.support.processes import redis_with

BODY = {"text": "I want to give up", "learner_id": "ada"}


def uncached(**kwargs: Any):
    """Settings without the result cache: every analysis is a Triton call the fake counts."""
    return make_settings(cache_backend="off", **kwargs)


def keyed(key: str | bytes, headers: dict[str, str] | None = None) -> dict[str, str | bytes]:
    return {**(headers or {}), "Idempotency-Key": key}


@pytest.fixture
def tenants(tmp_path: Path) -> dict[str, dict[str, str]]:
    out = {}
    for tenant in ("acme", "beta"):
        _, key = create_key(tmp_path / "keys.json", tenant, [s.value for s in Scope], key_id=tenant)
        out[tenant] = {"X-API-Key": key}
    return out


def audited(tmp_path: Path, **kwargs: Any):
    return uncached(
        api_keys_file=tmp_path / "keys.json",
        audit_hash_key=SecretStr(KEY),
        audit_backend="sqlite",
        audit_sqlite_path=tmp_path / "audit.sqlite3",
        **kwargs,
    )


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_a_retry_with_the_same_key_gets_the_first_answer_and_analyses_nothing_again(label_names):
    fake = FakeTriton(label_names)
    async with running(uncached(), fake) as (client, _):
        first = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        again = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert first.status_code == again.status_code == 200, again.text
        assert again.json() == first.json()  # the same result_id and trend: one analysis
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert len(fake.calls) == 1
        trajectory = (await client.get("/v1/learners/ada/trajectory")).json()
        assert len(trajectory["points"]) == 1
        # without a key, a second request is a second analysis
        unkeyed = await client.post("/v1/emotions", json=BODY)
        assert unkeyed.json()["trend"]["points"] == 2
        assert await metric(client, "gateway_idempotent_requests_total", outcome="first") == 1
        assert await metric(client, "gateway_idempotent_requests_total", outcome="replayed") == 1


async def test_the_same_key_with_another_body_is_refused(label_names):
    fake = FakeTriton(label_names)
    async with running(uncached(), fake) as (client, _):
        assert (await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))).status_code == 200
        # the same body with its keys in another order and other spacing is the same request
        same = await client.post(
            "/v1/emotions",
            content=b'{ "learner_id":"ada",  "text":"I want to give up" }',
            headers=keyed("k-1", {"content-type": "application/json"}),
        )
        assert same.status_code == 200 and same.headers["idempotent-replayed"] == "true"
        other = await client.post("/v1/emotions", json={**BODY, "text": "fine"}, headers=keyed("k-1"))
        assert other.status_code == 422
        assert error(other)["code"] == ErrorCode.IDEMPOTENCY_KEY_REUSED
        assert len(fake.calls) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve".encode("latin-1")])
async def test_a_malformed_key_is_a_422(label_names, key):
    async with running(uncached(), FakeTriton(label_names)) as (client, _):
        r = await client.post("/v1/emotions", json=BODY, headers=keyed(key))
    assert r.status_code == 422 and error(r)["code"] == ErrorCode.INVALID_REQUEST


async def test_while_the_first_request_runs_a_retry_is_a_409_then_the_first_answer(label_names):
    fake = FakeTriton(label_names)
    fake.hold = asyncio.Event()
    async with running(uncached(), fake) as (client, _):
        first = asyncio.create_task(client.post("/v1/emotions", json=BODY, headers=keyed("k-1")))
        await asyncio.wait_for(fake.entered.wait(), WAIT_S)
        during = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert during.status_code == 409 and during.headers["retry-after"] == "1"
        assert error(during)["code"] == ErrorCode.REQUEST_IN_PROGRESS
        fake.hold.set()
        answered = await asyncio.wait_for(first, WAIT_S)
        after = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert after.status_code == 200 and after.json() == answered.json()
        assert len(fake.calls) == 1


async def test_a_failed_request_keeps_nothing_so_its_retry_runs(label_names):
    fake = FakeTriton(label_names)
    fake.fail = GatewayError(ErrorCode.BACKEND_UNAVAILABLE, "down", {"Retry-After": "1"})
    async with running(uncached(), fake) as (client, _):
        failed = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert failed.status_code == 503
        fake.fail = None
        retried = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
        assert retried.json()["trend"]["points"] == 1


async def test_a_kept_answer_expires_after_the_ttl(label_names):
    clock = FakeClock()
    fake = FakeTriton(label_names)
    async with running(uncached(idempotency_ttl_s=60), fake, clock) as (client, _):
        first = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        clock.advance(59)
        assert (await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))).json() == first.json()
        clock.advance(2)
        later = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
        assert "idempotent-replayed" not in later.headers
        assert later.json()["results"][0]["result_id"] != first.json()["results"][0]["result_id"]


async def test_keys_are_the_tenants_own(tmp_path, tenants, label_names):
    fake = FakeTriton(label_names)
    async with running(audited(tmp_path), fake) as (client, _):
        acme = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1", tenants["acme"]))
        beta = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1", tenants["beta"]))
        assert acme.status_code == beta.status_code == 200
        assert "idempotent-replayed" not in beta.headers  # beta's request ran: it never sees acme's answer
        assert beta.json()["results"][0]["result_id"] != acme.json()["results"][0]["result_id"]
        # nor is beta refused for sending another body under a key acme used
        other = {**BODY, "text": "fine"}
        beta_other = await client.post("/v1/emotions", json=other, headers=keyed("k-2", tenants["beta"]))
        acme_other = await client.post("/v1/emotions", json=BODY, headers=keyed("k-2", tenants["acme"]))
        assert beta_other.status_code == acme_other.status_code == 200
        assert len(fake.calls) == 4


async def test_one_audit_row_and_one_outcome_per_key_and_erasure_forgets_the_kept_answers(
    tmp_path, tenants, label_names
):
    db = tmp_path / "audit.sqlite3"
    acme = tenants["acme"]
    async with running(audited(tmp_path), FakeTriton(label_names)) as (client, app):
        first = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1", acme))
        await client.post("/v1/emotions", json=BODY, headers=keyed("k-1", acme))
        await app.state.services.audit_trail.flush()
        assert count(db, "audit_log") == 1
        outcome = {
            "result_id": first.json()["results"][0]["result_id"],
            "learner_id": "ada",
            "outcome": "abandoned_session",
        }
        reported = await client.post("/v1/outcomes", json=outcome, headers=keyed("o-1", acme))
        again = await client.post("/v1/outcomes", json=outcome, headers=keyed("o-1", acme))
        assert reported.status_code == again.status_code == 201
        assert again.json() == reported.json() and again.headers["idempotent-replayed"] == "true"
        assert count(db, "audit_outcomes") == 1
        erased = await client.delete("/v1/learners/ada", headers=acme)
        assert erased.json()["removed"] == {
            "trajectory_points": 1,
            "audit_rows": 1,
            "idempotent_responses": 2,
        }
        # nothing of the learner is left to replay: the same key runs again
        after = await client.post("/v1/emotions", json=BODY, headers=keyed("k-1", acme))
        assert "idempotent-replayed" not in after.headers and after.json()["trend"]["points"] == 1


# ---- in the learner store's Redis ----------------------------------------------------------------


async def test_in_redis_a_retry_on_another_gateway_gets_the_first_answer(tmp_path, label_names):
    fake = FakeTriton(label_names)
    with redis_with(tmp_path, "maxmemory-policy", "noeviction") as url:
        settings = uncached(trajectory_backend="redis", learner_redis_url=url)
        async with running(settings, fake) as (one, _), running(settings, fake) as (two, _):
            first = await one.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
            again = await two.post("/v1/emotions", json=BODY, headers=keyed("k-1"))
            assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
            other = await two.post("/v1/emotions", json={**BODY, "text": "fine"}, headers=keyed("k-1"))
            assert other.status_code == 422
            assert len(fake.calls) == 1
            # a record this gateway cannot read (another version wrote it) is replaced, not a 500
            redis.Redis.from_url(url).set(f"goemotions:replay:{scoped('default', 'k-old')}", b"{not json")
            old = await one.post("/v1/emotions", json=BODY, headers=keyed("k-old"))
            assert old.status_code == 200 and "idempotent-replayed" not in old.headers
            erased = await two.delete("/v1/learners/ada")
            assert erased.json()["removed"]["idempotent_responses"] == 2
            assert (
                "idempotent-replayed"
                not in (await one.post("/v1/emotions", json=BODY, headers=keyed("k-1"))).headers
            )


async def test_with_its_redis_down_a_keyed_request_is_a_503_and_is_not_run(tmp_path, label_names):
    fake = FakeTriton(label_names)
    with redis_with(tmp_path) as url:
        settings = uncached(trajectory_backend="redis", learner_redis_url=url, backend_retry_s=30)
        async with running(settings, fake) as (client, _):
            assert (await client.post("/v1/emotions", json=BODY, headers=keyed("k-1"))).status_code == 200
            redis.Redis.from_url(url).shutdown(nosave=True)
            down = await client.post("/v1/emotions", json=BODY, headers=keyed("k-2"))
            assert down.status_code == 503 and 1 <= int(down.headers["retry-after"]) <= 30
            assert error(down)["code"] == ErrorCode.BACKEND_UNAVAILABLE
            assert len(fake.calls) == 1
            # a request without a key is answered (without the trajectory), as before
            assert (await client.post("/v1/emotions", json=BODY)).status_code == 200
            assert await metric(client, "gateway_idempotent_requests_total", outcome="unavailable") >= 1
