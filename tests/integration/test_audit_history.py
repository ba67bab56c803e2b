"""The audit trail through the in-process gateway (SQLite; PostgreSQL in test_audit_postgres.py):
what POST /v1/emotions records, GET /v1/learners/{id}/history, and requests that succeed while the audit
database is down."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support.fake_triton import FakeTriton
from tests.support.gateway import (
    AUTH,
    KEY,
    analyse,
    audit_settings,
    error,
    gateway,
    metric,
    running,
    services,
)
from tests.support.processes import free_port


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
async def client(fake: FakeTriton, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    s = audit_settings(audit_backend="sqlite", audit_sqlite_path=db)
    async with gateway(s, fake) as c:
        yield c


async def test_each_analysed_text_is_recorded_and_read_back(client, fake, label_names, db):
    answer = await analyse(client, texts=["I get it now!", "  still confused  "], learner_id="learner-7")
    await analyse(client, text="someone else", learner_id="learner-8")
    await analyse(client, text="no learner at all")

    r = await client.get("/v1/learners/learner-7/history", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["learner_id"] == "learner-7" and body["next_before"] is None
    entries = body["entries"]
    assert [e["text_index"] for e in entries] == [1, 0]  # newest first; one request, one timestamp
    assert len({e["request_id"] for e in entries}) == 1 and len({e["timestamp"] for e in entries}) == 1
    for entry in entries:
        result = answer["results"][entry["text_index"]]
        state = result["learning_state"]
        assert entry["labels"] == result["labels"]
        assert entry["primary_emotion"] == result["primary_emotion"]
        assert entry["confidence"] == result["confidence"]
        assert entry["readiness_state"] == state["readiness"]["state"]
        assert entry["readiness_score"] == state["readiness"]["score"]
        assert entry["valence"] == state["valence"]
        assert entry["intervention_level"] == state["intervention_level"]
        assert entry["reasons"] == state["reasons"]
        assert entry["model_version"] == "test-v1" and entry["channel"] == "http"
        assert entry["cached"] is False and entry["latency_ms"] > 0
        assert entry["text"] is None  # privacy default: a keyed hash only
        assert entry["timestamp"].endswith("Z")
    expected = hmac.new(KEY.encode(), b"still confused", hashlib.sha256).hexdigest()
    assert entries[0]["text_hash"] == expected

    # every request is recorded, with or without a learner; the texts themselves are not
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM audit_log WHERE learner_id IS NULL").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM audit_log WHERE text IS NOT NULL").fetchone()[0] == 0
    assert await metric(client, "gateway_audit_written_total") == 4


async def test_a_cache_hit_is_recorded_as_cached(client):
    await analyse(client, text="same text", learner_id="learner-1")
    await analyse(client, text="same text", learner_id="learner-1")
    entries = (await client.get("/v1/learners/learner-1/history", headers=AUTH)).json()["entries"]
    assert [e["cached"] for e in entries] == [True, False]
    assert entries[0]["text_hash"] == entries[1]["text_hash"]


async def test_history_pages_with_limit_and_before(client):
    for i in range(5):
        await analyse(client, texts=[f"message {i}a", f"message {i}b"], learner_id="learner-3")
    seen: list[tuple[str, int]] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        r = await client.get("/v1/learners/learner-3/history", params=params, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        seen += [(e["request_id"], e["text_index"]) for e in body["entries"]]
        if body["next_before"] is None:
            break
        params = {"limit": 3, "before": body["next_before"], "before_id": body["next_before_id"]}
    assert pages == 4 and len(seen) == 10 and len(set(seen)) == 10  # 3+3+3+1, no row twice or lost
    everything = (await client.get("/v1/learners/learner-3/history?limit=500", headers=AUTH)).json()
    assert [(e["request_id"], e["text_index"]) for e in everything["entries"]] == seen

    newest = everything["entries"][0]["timestamp"]
    older = await client.get("/v1/learners/learner-3/history", params={"before": newest}, headers=AUTH)
    assert len(older.json()["entries"]) == 8  # the newest request's two rows share its timestamp


async def test_an_unknown_learner_is_a_404(client):
    r = await client.get("/v1/learners/nobody/history", headers=AUTH)
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    assert "nobody" in error(r)["message"]


async def test_history_needs_the_api_key(client):
    await analyse(client, text="hello", learner_id="learner-1")
    r = await client.get("/v1/learners/learner-1/history")
    assert r.status_code == 401 and error(r)["code"] == "unauthorized"
    r = await client.get("/v1/learners/learner-1/history", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/v1/learners/has%20space/history", "learner_id"),
        ("/v1/learners/" + "x" * 129 + "/history", "learner_id"),
        ("/v1/learners/a/history?limit=0", "limit"),
        ("/v1/learners/a/history?limit=501", "limit"),
        ("/v1/learners/a/history?limit=ten", "limit"),
        ("/v1/learners/a/history?before=yesterday", "before"),
        ("/v1/learners/a/history?before=2025-03-04T10:00:00", "before"),  # no zone: ambiguous
        ("/v1/learners/a/history?before_id=-1&before=2025-03-04T10:00:00Z", "before_id"),
        ("/v1/learners/a/history?before_id=3", "before_id needs before"),
        ("/v1/learners/a/history?before_id=99999999999999999999&before=2025-03-04T10:00:00Z", "before_id"),
        ("/v1/learners/a/history?before=9999-12-31T23:00:00-05:00", "before"),  # past year 9999 in UTC
    ],
)
async def test_bad_history_parameters_are_a_422_that_names_them(client, path, where):
    r = await client.get(path, headers=AUTH)
    assert r.status_code == 422, r.text
    assert where in error(r)["message"]


async def test_store_text_records_the_normalized_text(fake, db):
    s = audit_settings(audit_backend="sqlite", audit_sqlite_path=db, audit_store_text=True)
    async with gateway(s, fake) as c:
        await analyse(c, text="  Exactly what I needed \n", learner_id="learner-1")
        [entry] = (await c.get("/v1/learners/learner-1/history", headers=AUTH)).json()["entries"]
    assert entry["text"] == "Exactly what I needed"
    assert entry["text_hash"] == hmac.new(KEY.encode(), b"Exactly what I needed", hashlib.sha256).hexdigest()


async def test_history_says_when_the_audit_trail_is_disabled(fake):
    """A feature turned off is not an outage: 404 with its own code, not a 503 a client would retry."""
    async with gateway(audit_settings(), fake) as c:
        await analyse(c, text="hello", learner_id="learner-1")
        r = await c.get("/v1/learners/learner-1/history", headers=AUTH)
        assert r.status_code == 404 and "retry-after" not in r.headers
        assert error(r)["code"] == "feature_disabled"
        assert "audit trail is disabled" in error(r)["message"]
        assert "GATEWAY_AUDIT_BACKEND" in error(r)["message"]
        assert await metric(c, "gateway_audit_written_total") == 0


async def test_the_gateway_refuses_to_start_with_audit_on_and_no_hash_key(fake, db):
    s = audit_settings(audit_backend="sqlite", audit_sqlite_path=db, audit_hash_key=None)
    with pytest.raises(ValueError, match="GATEWAY_AUDIT_HASH_KEY"):
        async with gateway(s, fake):
            pass


async def test_requests_succeed_while_the_audit_database_is_unreachable(fake, caplog):
    # nothing listens on this port: every connect attempt fails
    dsn = f"postgresql://gateway:s3cret-pg-pass@127.0.0.1:{free_port()}/audit"
    s = audit_settings(audit_backend="postgres", audit_dsn=SecretStr(dsn), audit_batch_size=1)
    async with running(s, fake) as (c, app):
        for i in range(3):
            answer = await analyse(c, text=f"still answered {i}", learner_id="learner-1")
            assert answer["results"][0]["primary_emotion"]
        r = await c.get("/v1/learners/learner-1/history", headers=AUTH)
        assert r.status_code == 503 and "audit database is unavailable" in error(r)["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert await metric(c, "gateway_audit_written_total") == 0
        core = services(app)
        assert core.audit_trail is not None
    # the writer was stopped within its shutdown bound; nothing was written, every row was counted
    dropped = sum(
        core.metrics.registry.get_sample_value("gateway_audit_dropped_total", {"reason": reason}) or 0
        for reason in ("db_error", "shutdown", "queue_full")
    )
    assert dropped == 3
    assert "audit database unavailable" in caplog.text and "s3cret-pg-pass" not in caplog.text


async def test_requests_succeed_when_the_audit_queue_is_full(fake, db):
    s = audit_settings(
        audit_backend="sqlite",
        audit_sqlite_path=db,
        audit_queue_size=1,
        audit_flush_interval_s=60,
    )
    async with gateway(s, fake) as c:
        answer = await analyse(c, texts=["one", "two", "three"], learner_id="learner-1")
        assert len(answer["results"]) == 3
        assert await metric(c, "gateway_audit_dropped_total", reason="queue_full") == 2
        assert await metric(c, "gateway_audit_queue_depth") == 1
