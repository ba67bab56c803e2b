"""The audit trail on a real PostgreSQL 16 server (pgserver's bundled binaries, started by the fixture,
one fresh database per test): migrations, types, retention, reconnects, and the gateway on top."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from gateway.backends.audit.store import PostgresStore, migrations
from gateway.backends.audit.writer import AuditTrail
from gateway.metrics import Metrics
from server.probes import wait_for_async
from tests.support.fake_triton import FakeTriton
from tests.support.gateway import (
    AUTH,
    KEY,
    NOW,
    FakeClock,
    analyse,
    audit_settings,
    erase_many,
    every_page,
    row,
    running,
    sample,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server for the session in a fresh directory; stopped and removed at the end."""
    # Not under pytest's tmp_path: as root, pgserver runs postgres as its own user, which must traverse
    # the parents, and every pytest session start resets /tmp/pytest-of-<user> to mode 0700.
    root = Path(tempfile.mkdtemp(prefix="goemotions-audit-pg-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR
            import pgserver

            server = pgserver.get_server(root / "data", cleanup_mode="stop")
        try:
            yield server
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres: Any) -> Iterator[str]:
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres.get_uri(name)
    with psycopg.connect(postgres.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def trail(pg_dsn: str, clock: FakeClock) -> AsyncIterator[AuditTrail]:
    t = AuditTrail(PostgresStore(pg_dsn), Metrics(), hash_key=KEY.encode(), retention_days=0, clock=clock)
    yield t
    await t.stop()


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_migrations_apply_once_even_when_replicas_start_together(pg_dsn: str):
    errors: list[BaseException] = []

    def start_replica() -> None:
        store = PostgresStore(pg_dsn)
        try:
            store.open()
        except BaseException as exc:  # collected: an exception in a thread would pass silently
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=start_replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    PostgresStore(pg_dsn).open()  # and once more, later
    assert query(pg_dsn, "SELECT version FROM schema_migrations") == [(v,) for v, _ in migrations("postgres")]
    columns = dict(
        query(
            pg_dsn,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'audit_log'",
        )
    )
    assert columns["ts"] == "timestamp with time zone" and columns["labels"] == "jsonb"
    assert columns["tenant"] == "text"
    assert {"audit_log_tenant_learner_ts", "audit_log_ts"} <= {
        n for (n,) in query(pg_dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_log'")
    }


async def test_rows_round_trip_with_their_types(trail: AuditTrail, pg_dsn: str):
    written = row(NOW)
    trail.submit([written, row(NOW, learner_id=None)])
    assert await trail.flush() == 2
    [entry] = await trail.history("default", "learner-1", 10, None)
    assert {k: v for k, v in vars(entry).items() if k != "id"} == vars(written)
    assert entry.ts.tzinfo is not None and entry.ts.utcoffset() == timedelta(0)
    [(labels, kind)] = query(
        pg_dsn, "SELECT labels, jsonb_typeof(labels) FROM audit_log WHERE learner_id IS NOT NULL"
    )
    assert labels == ["joy", "gratitude"] and kind == "array"
    assert sample(trail.metrics, "gateway_audit_written_total") == 2


async def test_history_pages_through_ties_without_gaps(trail: AuditTrail):
    trail.submit(
        [row(NOW - timedelta(minutes=m), index=i, request=f"r{m}") for m in (2, 1) for i in range(3)]
    )
    seen = await every_page(trail, "learner-1", 4)
    assert seen == [("r1", 2), ("r1", 1), ("r1", 0), ("r2", 2), ("r2", 1), ("r2", 0)]


async def test_retention_deletes_old_rows(pg_dsn: str):
    trail = AuditTrail(PostgresStore(pg_dsn), Metrics(), hash_key=KEY.encode(), retention_days=7)
    try:
        trail.submit([row(NOW - timedelta(days=d), index=d) for d in (0, 6, 8, 100)])
        await trail.flush()
        assert await trail.apply_retention(now=NOW) == 2
        assert sorted(i for (i,) in query(pg_dsn, "SELECT text_index FROM audit_log")) == [0, 6]
    finally:
        await trail.stop()


async def test_a_dropped_connection_costs_one_batch_then_the_writer_reconnects(
    trail: AuditTrail, pg_dsn: str, clock: FakeClock
):
    trail.submit([row(index=0)])
    assert await trail.flush() == 1
    # the server ends the writer's session (a failover, a restart, an idle timeout would)
    query(
        pg_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'goemotions-gateway-audit'",
    )
    trail.submit([row(index=1)])
    assert await trail.flush() == 0
    assert sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") == 1
    trail.submit([row(index=2)])
    assert await trail.flush() == 0  # backing off: not tried yet
    clock.advance(1.0)
    assert await trail.flush() == 1
    assert sorted(i for (i,) in query(pg_dsn, "SELECT text_index FROM audit_log")) == [0, 2]


async def test_the_gateway_records_to_postgres_and_reads_the_history_back(
    pg_dsn: str, tmp_path: Path, label_names
):
    s = audit_settings(audit_backend="postgres", audit_dsn=SecretStr(pg_dsn))
    async with running(s, FakeTriton(label_names)) as (client, _):
        answer = await analyse(client, texts=["first", "second"], learner_id="learner-pg")
        r = await client.get("/v1/learners/learner-pg/history", headers=AUTH)
        assert r.status_code == 200, r.text
        entries = r.json()["entries"]
        assert [e["text_index"] for e in entries] == [1, 0]
        assert [e["labels"] for e in reversed(entries)] == [x["labels"] for x in answer["results"]]
        await analyse(client, text="written at shutdown", learner_id="learner-pg")
    # the lifespan's shutdown flushed the queued row
    assert query(pg_dsn, "SELECT count(*) FROM audit_log") == [(3,)]
    assert query(pg_dsn, "SELECT count(*) FROM audit_log WHERE text IS NOT NULL") == [(0,)]


async def test_the_writer_survives_the_database_refusing_connections_and_recovers(pg_dsn: str, postgres: Any):
    """The database refuses every connection for a while (as during a restart): rows are dropped and
    counted, and once it accepts connections again the writer reconnects by itself."""
    trail = AuditTrail(
        PostgresStore(pg_dsn),
        Metrics(),
        hash_key=KEY.encode(),
        retention_days=0,
        batch_size=1,
        flush_interval_s=0.01,
    )
    name = conninfo_to_dict(pg_dsn)["dbname"]
    await trail.start()
    try:
        trail.submit([row(index=0)])
        await wait_for(lambda: sample(trail.metrics, "gateway_audit_written_total") == 1)
        with psycopg.connect(postgres.get_uri(), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
        trail.submit([row(index=1)])
        await wait_for(lambda: sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") >= 1)
        with psycopg.connect(postgres.get_uri(), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        trail.submit([row(index=2)])
        # once the back-off (1 s, doubling) has passed, the writer reconnects and writes the new row
        await wait_for(lambda: sample(trail.metrics, "gateway_audit_written_total") == 2, timeout=60)
    finally:
        await trail.stop()
    assert sorted(i for (i,) in query(pg_dsn, "SELECT text_index FROM audit_log")) == [0, 2]


async def wait_for(condition: Any, timeout: float = 30) -> None:
    assert await wait_for_async(condition, timeout), "condition not reached"


async def test_erasure_removes_the_tenants_learner_and_records_it_without_the_id(
    trail: AuditTrail, pg_dsn: str
):
    trail.submit(
        [row(NOW, tenant="acme", request=f"r{i}") for i in range(3)]
        + [row(NOW, tenant="beta"), row(NOW, learner_id="other", tenant="acme")]
    )
    assert await trail.flush() == 5
    trail.submit([row(NOW, tenant="acme", request="queued")])  # not written yet: erased from the queue
    assert await trail.erase("acme", "learner-1", "key-1", 4) == 4
    assert await trail.flush() == 0
    assert query(pg_dsn, "SELECT tenant, learner_id FROM audit_log ORDER BY tenant") == [
        ("acme", "other"),
        ("beta", "learner-1"),
    ]
    digest = hmac.new(KEY.encode(), b"acme:learner-1", hashlib.sha256).hexdigest()
    records = query(
        pg_dsn, "SELECT tenant, learner_hash, key_id, trajectory_points, audit_rows FROM audit_erasures"
    )
    assert records == [("acme", digest, "key-1", 4, 4)]
    assert await trail.erase("acme", "learner-1", "key-1", 0) == 0  # idempotent
    assert await trail.history("acme", "learner-1", 10, None) == []
    assert len(await trail.history("beta", "learner-1", 10, None)) == 1


def test_erasing_a_learner_with_10000_rows_leaves_none(pg_dsn: str):
    erase_many(
        PostgresStore(pg_dsn), 10_000
    )  # its time is measured by tests.support.erasure_timing (docs/audit.md)
    assert query(pg_dsn, "SELECT count(*) FROM audit_log WHERE learner_id = 'learner-1'") == [(0,)]
    assert query(pg_dsn, "SELECT count(*) FROM audit_log") == [(10,)]  # the other learner's


async def test_outcomes_link_round_trip_and_go_with_erasure_and_retention(trail: AuditTrail, pg_dsn: str):
    from gateway.backends.audit.store import Erasure, Outcome

    features = {"learning_emotions": {"frustration": 0.4}, "context": None, "risk_score": 0.3}
    written = dataclasses.replace(row(NOW, request="a" * 32), features=features, policy_version="v1-abc")
    trail.submit([written])

    def outcome(learner: str, request: str = "a" * 32, tenant: str = "default") -> Outcome:
        return Outcome(datetime.now(UTC), tenant, learner, request, 0, "asked_for_help", None, "k1")

    assert await trail.record_outcome(outcome("learner-1")) is not None  # flushes the queued row first
    assert await trail.record_outcome(outcome("learner-2")) is None  # another learner's result
    assert await trail.record_outcome(outcome("learner-1", tenant="beta")) is None  # another tenant's
    assert await trail.record_outcome(outcome("learner-1", request="b" * 32)) is None  # no such result
    [(stored_features, version, kind)] = query(
        pg_dsn, "SELECT features, policy_version, jsonb_typeof(features) FROM audit_log"
    )
    assert stored_features == features and version == "v1-abc" and kind == "object"
    store = trail.store
    assert store.erase_learner("default", "learner-1", Erasure(NOW, "default", None, None, 0, 0)) == 1
    assert query(pg_dsn, "SELECT count(*) FROM audit_outcomes") == [(0,)]
    assert query(pg_dsn, "SELECT outcomes FROM audit_erasures") == [(1,)]
    trail.submit([row(NOW, request="c" * 32)])
    assert await trail.record_outcome(outcome("learner-1", request="c" * 32)) is not None
    store.delete_before(datetime.now(UTC) + timedelta(days=1))
    assert query(pg_dsn, "SELECT count(*) FROM audit_outcomes") == [(0,)]
