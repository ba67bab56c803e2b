"""The audit trail on SQLite: migrations, hashing, the bounded queue, outages, retention, paging."""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.backends.audit import store as audit_store
from gateway.backends.audit.store import Before, SqliteStore, migrations
from gateway.backends.audit.writer import AuditTrail
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.services import audit_trail_from
from gateway.settings import Settings
from server.probes import wait_for_async
from tests.support.gateway import NOW, FakeClock, erase_many, every_page, row, sample

KEY = b"0123456789abcdef-test-key"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
async def make_trail(db: Path) -> AsyncIterator:
    made: list[AuditTrail] = []

    def make(path: Path = db, **kwargs) -> AuditTrail:
        kwargs.setdefault("hash_key", KEY)
        kwargs.setdefault("retention_days", 0)  # the rows' fixed timestamps are older than the default
        trail = AuditTrail(SqliteStore(path), Metrics(), **kwargs)
        made.append(trail)
        return trail

    yield make
    for trail in made:
        await trail.stop()


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_apply_once_and_reopening_is_a_no_op(db: Path):
    for _ in range(3):
        store = SqliteStore(db)
        store.open()
        store.insert([row()])
        store.close()
    with sqlite3.connect(db) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert (
        versions
        == [v for v, _ in migrations("sqlite")]
        == ["0001_init", "0002_tenants_erasure", "0003_outcomes"]
    )
    assert {
        "audit_log_tenant_learner_ts",
        "audit_log_ts",
        "audit_erasures_tenant_ts",
        "audit_log_tenant_request",
    } <= indexes
    assert "audit_log_learner_ts" not in indexes  # replaced by the (tenant, learner) index
    assert count_rows(db) == 3


def test_a_new_migration_applies_in_order_on_the_next_open(db: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "migrations"
    (root / "sqlite").mkdir(parents=True)
    (root / "sqlite" / "0001_init.sql").write_text(
        (audit_store.MIGRATIONS_DIR / "sqlite" / "0001_init.sql").read_text()
    )
    monkeypatch.setattr(audit_store, "MIGRATIONS_DIR", root)
    SqliteStore(db).open()
    # 0003 depends on 0002's column: applied out of order it would fail
    (root / "sqlite" / "0003_fill.sql").write_text(
        "UPDATE audit_log SET note = 'x'; -- a comment; with a semicolon\n"
    )
    (root / "sqlite" / "0002_note.sql").write_text(
        "-- adds a column\nALTER TABLE audit_log\n  ADD COLUMN note TEXT;\n"
    )
    store = SqliteStore(db)
    store.open()
    store.close()
    with sqlite3.connect(db) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == [
            "0001_init",
            "0002_note",
            "0003_fill",
        ]
        assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(audit_log)")}


def test_a_failing_migration_leaves_nothing_half_applied(db: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "migrations"
    (root / "sqlite").mkdir(parents=True)
    (root / "sqlite" / "0001_init.sql").write_text(
        "CREATE TABLE audit_log (id INTEGER PRIMARY KEY);\nCREATE TABLE broken (;\n"
    )
    monkeypatch.setattr(audit_store, "MIGRATIONS_DIR", root)
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(db).open()
    with sqlite3.connect(db) as conn:
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "audit_log" not in tables


def test_migration_files_must_be_numbered(tmp_path: Path, monkeypatch):
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "sqlite" / "init.sql").write_text("SELECT 1;")
    monkeypatch.setattr(audit_store, "MIGRATIONS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        migrations("sqlite")


def test_an_unterminated_statement_in_a_migration_is_refused():
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        audit_store._split_statements("CREATE TABLE a (x INTEGER);\nCREATE TABLE b (y INTEGER)\n-- end\n")
    # line by line: a statement keeps its comments; a semicolon inside a comment does not split
    assert audit_store._split_statements("-- only\nSELECT 1; -- trailing; comment\n-- end\n") == [
        "-- only\nSELECT 1; -- trailing; comment"
    ]


# --- settings and privacy -----------------------------------------------------------------------


def settings(**kwargs) -> Settings:
    return Settings(_env_file=None, **kwargs)


def test_audit_is_off_by_default():
    assert settings().audit_backend == "off"
    assert audit_trail_from(settings(), Metrics()) is None


def test_audit_without_a_hash_key_refuses_to_start_unless_texts_are_stored(tmp_path: Path):
    with pytest.raises(ValueError, match="GATEWAY_AUDIT_HASH_KEY is required"):
        audit_trail_from(settings(audit_backend="sqlite"), Metrics())
    with pytest.raises(ValueError, match="too short"):
        audit_trail_from(settings(audit_backend="sqlite", audit_hash_key=SecretStr("short")), Metrics())
    trail = audit_trail_from(
        settings(audit_backend="sqlite", audit_store_text=True, audit_sqlite_path=tmp_path / "a.db"),
        Metrics(),
    )
    assert trail is not None and trail.text_fields("hi") == (None, "hi")


def test_postgres_needs_a_dsn():
    with pytest.raises(ValueError, match="GATEWAY_AUDIT_DSN"):
        audit_trail_from(settings(audit_backend="postgres", audit_hash_key=SecretStr("k" * 32)), Metrics())


def test_the_key_and_the_dsn_never_show_in_reprs():
    s = settings(
        audit_backend="postgres",
        audit_hash_key=SecretStr("super-secret-hash-key"),
        audit_dsn=SecretStr("postgresql://gateway:pg-password@db/audit"),
    )
    trail = audit_trail_from(s, Metrics())
    text = repr(s) + str(s) + repr(trail) + repr(trail.store) + repr(vars(trail.store).keys())
    assert "super-secret-hash-key" not in text and "pg-password" not in text


async def test_texts_are_recorded_as_a_keyed_hash_of_the_normalized_text(make_trail):
    trail = make_trail()
    digest, text = trail.text_fields("  Cafe\u0301 is open \n")
    assert text is None
    assert digest == hmac.new(KEY, "Café is open".encode(), hashlib.sha256).hexdigest()
    assert trail.text_fields("Café is open") == (digest, None)  # NFC + strip: same text, same hash
    other = make_trail(hash_key=b"another-key-of-16-chars")
    assert other.text_fields("Café is open")[0] != digest  # keyed: no key, no dictionary attack


async def test_store_text_records_the_normalized_text_and_the_hash(make_trail):
    trail = make_trail(store_text=True)
    digest, text = trail.text_fields(" hello ")
    assert text == "hello" and digest == hmac.new(KEY, b"hello", hashlib.sha256).hexdigest()


# --- the queue ----------------------------------------------------------------------------------


async def test_a_full_queue_drops_rows_and_counts_them(make_trail):
    trail = make_trail(queue_size=3)
    trail.submit([row(index=i) for i in range(5)])
    assert sample(trail.metrics, "gateway_audit_dropped_total", reason="queue_full") == 2
    assert sample(trail.metrics, "gateway_audit_queue_depth") == 3
    assert await trail.flush() == 3
    assert sample(trail.metrics, "gateway_audit_written_total") == 3
    assert sample(trail.metrics, "gateway_audit_queue_depth") == 0


async def test_flush_writes_in_batches(make_trail, db: Path):
    trail = make_trail(batch_size=4)
    trail.submit([row(index=i) for i in range(10)])
    assert await trail.flush() == 10
    assert count_rows(db) == 10


async def test_a_database_outage_drops_the_batch_logs_once_and_recovers(make_trail, tmp_path: Path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database directory should be")
    path = blocker / "audit.sqlite3"
    clock = FakeClock()
    trail = make_trail(path=path, batch_size=2, clock=clock)
    caplog.set_level(logging.WARNING, logger="gateway.backends.audit.writer")

    trail.submit([row(index=i) for i in range(3)])
    assert await trail.flush() == 0  # the first batch fails; the writer stops there
    assert sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") == 2
    assert trail.queue.qsize() == 1  # left for the next attempt
    assert await trail.flush() == 0
    assert sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") == 2  # backing off
    clock.advance(1.0)
    assert await trail.flush() == 0  # the retry fails too: the next one waits twice as long
    assert sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") == 3
    outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_logs) == 1  # once per outage, not per batch

    blocker.unlink()  # the database can be created again
    trail.submit([row(index=7)])
    clock.advance(1.9)
    assert await trail.flush() == 0 and trail.queue.qsize() == 1
    clock.advance(0.1)
    assert await trail.flush() == 1
    assert sample(trail.metrics, "gateway_audit_written_total") == 1
    assert any("back after" in r.getMessage() and "3 audit rows" in r.getMessage() for r in caplog.records)
    assert [e.text_index for e in await trail.history("default", "learner-1", 10, None)] == [7]


async def test_the_background_writer_backs_off_and_shutdown_drops_what_it_cannot_write(make_trail, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    trail = make_trail(path=blocker / "audit.sqlite3", batch_size=1, flush_interval_s=0.01, clock=FakeClock())
    await trail.start()
    trail.submit([row(index=i) for i in range(5)])
    tried = await wait_for_async(
        lambda: sample(trail.metrics, "gateway_audit_dropped_total", reason="db_error") >= 1, 30
    )
    assert tried, "the writer never tried"
    await trail.stop()
    dropped = {
        reason: sample(trail.metrics, "gateway_audit_dropped_total", reason=reason)
        for reason in ("db_error", "shutdown")
    }
    # the back-off kept the writer from burning every row on retries (the clock never moved: one failed
    # write, then the one last try at shutdown); nothing is lost silently
    assert dropped == {"db_error": 2, "shutdown": 3}
    assert sample(trail.metrics, "gateway_audit_written_total") == 0


async def test_the_background_writer_writes_a_full_batch_without_waiting_for_the_interval(make_trail, db):
    trail = make_trail(batch_size=3, flush_interval_s=3600)
    await trail.start()
    trail.submit([row(index=i) for i in range(3)])
    written = await wait_for_async(lambda: sample(trail.metrics, "gateway_audit_written_total") >= 3, 30)
    assert written, "a full batch waited for the interval"
    assert count_rows(db) == 3


async def test_shutdown_writes_what_is_queued(make_trail, db: Path):
    trail = make_trail(flush_interval_s=3600)
    await trail.start()
    trail.submit([row(index=i) for i in range(7)])
    await trail.stop()
    assert count_rows(db) == 7
    assert sample(trail.metrics, "gateway_audit_written_total") == 7


# --- retention and reads ------------------------------------------------------------------------


async def test_retention_deletes_rows_older_than_the_setting(make_trail, db: Path):
    trail = make_trail(retention_days=30)
    trail.submit([row(NOW - timedelta(days=d), index=d) for d in (0, 29, 31, 400)])
    await trail.flush()
    assert await trail.apply_retention(now=NOW) == 2
    assert sorted(e.text_index for e in await trail.history("default", "learner-1", 10, None)) == [0, 29]
    assert sample(trail.metrics, "gateway_audit_deleted_total") == 2


async def test_retention_zero_keeps_everything(make_trail, db: Path):
    trail = make_trail(retention_days=0)
    trail.submit([row(NOW - timedelta(days=5000))])
    await trail.flush()
    assert await trail.apply_retention(now=NOW) == 0
    assert count_rows(db) == 1


async def test_history_is_one_learners_rows_newest_first_and_pages_without_gaps(make_trail):
    trail = make_trail()
    rows = [row(NOW - timedelta(minutes=m), index=i, request=f"r{m}") for m in (3, 2, 1) for i in range(3)]
    rows.append(row(NOW, learner_id="someone-else"))
    rows.append(row(NOW, learner_id=None))
    trail.submit(rows)
    seen = await every_page(trail, "learner-1", 2)
    assert seen == [(f"r{m}", i) for m in (1, 2, 3) for i in (2, 1, 0)]
    only_older = await trail.history("default", "learner-1", 10, Before(NOW - timedelta(minutes=2)))
    assert {e.request_id for e in only_older} == {"r3"}


async def test_history_reads_back_every_field(make_trail):
    trail = make_trail()
    written = row(NOW)
    trail.submit([written])
    [entry] = await trail.history("default", "learner-1", 5, None)
    assert entry.ts == NOW and entry.ts.tzinfo is not None
    assert {k: v for k, v in vars(entry).items() if k != "id"} == vars(written)


# --- tenants and erasure (issue 14) ----------------------------------------------------------------


def rows_of(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_history_is_the_tenants_learner_only(make_trail):
    trail = make_trail()
    trail.submit([row(NOW, tenant="acme", index=1), row(NOW, tenant="beta", index=2)])
    assert [e.text_index for e in await trail.history("acme", "learner-1", 10, None)] == [1]
    assert [e.tenant for e in await trail.history("beta", "learner-1", 10, None)] == ["beta"]
    assert await trail.history("default", "learner-1", 10, None) == []


async def test_erasure_removes_written_and_queued_rows_and_records_only_a_keyed_hash(make_trail, db: Path):
    trail = make_trail(retention_days=30)
    trail.submit([row(NOW, tenant="acme", index=i) for i in range(3)] + [row(NOW, tenant="beta")])
    assert await trail.flush() == 4
    trail.submit([row(NOW, tenant="acme", index=9), row(NOW, tenant="acme", learner_id="other")])
    assert await trail.erase("acme", "learner-1", "key-1", 5) == 4  # 3 written + 1 still queued
    assert await trail.flush() == 1  # the other learner's row only
    assert rows_of(db, "SELECT tenant, learner_id FROM audit_log ORDER BY tenant") == [
        ("acme", "other"),
        ("beta", "learner-1"),
    ]
    digest = hmac.new(KEY, b"acme:learner-1", hashlib.sha256).hexdigest()
    assert rows_of(
        db, "SELECT tenant, learner_hash, key_id, trajectory_points, audit_rows FROM audit_erasures"
    ) == [("acme", digest, "key-1", 5, 4)]
    assert await trail.erase("acme", "learner-1", "key-1", 0) == 0
    # retention keeps working beside the erasure records (which it keeps)
    assert await trail.apply_retention(now=NOW + timedelta(days=31)) == 2
    assert len(rows_of(db, "SELECT * FROM audit_erasures")) == 2


async def test_erasure_without_a_hash_key_records_nothing_of_the_learner(make_trail, db: Path):
    trail = make_trail(hash_key=None, store_text=True)
    trail.submit([row(NOW)])
    assert await trail.erase("default", "learner-1", None, 0) == 1
    assert rows_of(db, "SELECT learner_hash, key_id FROM audit_erasures") == [(None, None)]


async def test_erasure_is_a_503_while_the_database_is_unavailable(make_trail, tmp_path: Path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's folder should be")
    trail = make_trail(path=blocked / "audit.sqlite3")
    with pytest.raises(GatewayError) as info:
        await trail.erase("acme", "learner-1", None, 0)
    assert info.value.status == 503 and int(info.value.headers["Retry-After"]) >= 1


def test_erasing_a_learner_with_10000_rows_leaves_none(db: Path):
    erase_many(
        SqliteStore(db), 10_000
    )  # its time is measured by tests.support.erasure_timing (docs/audit.md)
    assert rows_of(db, "SELECT count(*) FROM audit_log WHERE learner_id = 'learner-1'") == [(0,)]
    assert rows_of(db, "SELECT count(*) FROM audit_log") == [(10,)]


async def test_outcomes_for_queued_rows_wait_for_the_writers_batch_instead_of_forcing_one(
    make_trail, db: Path
):
    """A platform posting each outcome right after its answer: the rows still go in one batch."""
    import asyncio

    from gateway.backends.audit.store import Outcome

    trail = make_trail(flush_interval_s=0.3)
    batches: list[int] = []
    insert = trail.store.insert

    def counted(rows):
        batches.append(len(rows))
        return insert(rows)

    trail.store.insert = counted  # type: ignore[method-assign]
    await trail.start()
    pending = []
    for i in range(4):
        trail.submit([row(NOW, request=f"r{i}")])
        outcome = Outcome(NOW, "default", "learner-1", f"r{i}", 0, "asked_for_help", None, None)
        pending.append(asyncio.create_task(trail.record_outcome(outcome)))
        await asyncio.sleep(0)  # let the outcome run up to its wait before the next answer arrives
    ids = await asyncio.gather(*pending)
    assert all(i is not None for i in ids)  # every outcome linked to its row
    assert batches == [4]  # forcing a write per outcome would have made four batches


async def test_an_outcome_whose_row_cannot_be_written_is_a_503_not_a_404(make_trail, db: Path):
    from gateway.backends.audit.store import Outcome

    trail = make_trail(flush_interval_s=3600, clock=FakeClock())
    trail.submit([row(NOW, request="queued")])
    trail.breaker.failure()  # the database just failed: the writer may not try again yet
    with pytest.raises(GatewayError) as raised:
        await trail.record_outcome(
            Outcome(NOW, "default", "learner-1", "queued", 0, "asked_for_help", None, None)
        )
    assert raised.value.status == 503 and "Retry-After" in raised.value.headers
    assert trail.queue.qsize() == 1  # the row is kept for the writer's next try


async def test_an_outcome_flushes_the_queue_only_for_its_own_queued_row(make_trail, db: Path):
    from gateway.backends.audit.store import Outcome

    def outcome(request: str) -> Outcome:
        return Outcome(NOW, "default", "learner-1", request, 0, "asked_for_help", None, None)

    trail = make_trail(flush_interval_s=3600)  # no background writer: only what the test calls writes
    trail.submit([row(NOW, request="written")])
    assert await trail.flush() == 1
    trail.submit([row(NOW, request="queued"), row(NOW, request="other")])
    # its row is in the database already: the queue stays as it is (the writer batches it later)
    assert await trail.record_outcome(outcome("written")) is not None
    assert trail.queue.qsize() == 2 and count_rows(db) == 1
    # its row is still queued (answered a moment ago): the queue is written first, so it links
    assert await trail.record_outcome(outcome("queued")) is not None
    assert trail.queue.qsize() == 0 and count_rows(db) == 3
    assert await trail.record_outcome(outcome("never-analysed")) is None
    # erasure re-queues the rows it keeps: they are still known as queued
    trail.submit([row(NOW, request="kept", learner_id="other")])
    await trail.erase("default", "learner-1", None, 0)
    assert trail.queue.qsize() == 1
    other = Outcome(NOW, "default", "other", "kept", 0, "asked_for_help", None, None)
    assert await trail.record_outcome(other) is not None and trail.queue.qsize() == 0
