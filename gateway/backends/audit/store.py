"""Audit-trail storage: SQLite (embedded, the standard library) or PostgreSQL (psycopg).

Both stores are synchronous and meant to be called from one worker thread (``AuditTrail`` runs them in
a single-thread executor). A store connects lazily, applies the pending migrations from
``migrations/<dialect>/NNNN_name.sql`` once each (recorded in ``schema_migrations``), and drops its
connection after any error so that the next call reconnects.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, get_args

import psycopg
from psycopg.types.json import Jsonb

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
# Any integer: serializes migrations when several gateway replicas start at once.
PG_MIGRATION_LOCK = 0x601A0D17
PG_CONNECT_TIMEOUT_S = 3
PG_STATEMENT_TIMEOUT_MS = 5000
APPLICATION_NAME = "goemotions-gateway-audit"

# What a store raises when its database is unavailable or refuses a statement.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, OSError)


@dataclass(frozen=True)
class AuditRow:
    """One analysed text: what was decided, by which model, for whom, how fast."""

    ts: datetime  # UTC
    learner_id: str | None
    request_id: str
    text_index: int
    channel: str  # "http" or "ws"
    model_version: str
    labels: list[str]
    primary_emotion: str
    confidence: float
    readiness_state: str
    readiness_score: float
    valence: float
    intervention_level: str
    reasons: list[str]
    latency_ms: float
    cached: bool
    text_hash: str | None
    text: str | None
    # the API key's tenant: learner ids are unique within a tenant only
    tenant: str = field(default="default", kw_only=True)
    # what decided (learning emotions, VAD, context, risk, deviation) and the policy that decided it;
    # None in rows written before they were kept
    features: dict[str, Any] | None = field(default=None, kw_only=True)
    policy_version: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class AuditEntry(AuditRow):
    id: int


@dataclass(frozen=True)
class Erasure:
    """The record of one learner's erasure: nothing that identifies the learner but a keyed hash."""

    ts: datetime  # UTC
    tenant: str
    learner_hash: str | None  # HMAC-SHA256 of "<tenant>:<learner id>" under the audit hash key, or None
    key_id: str | None  # the API key that asked (None while auth is off)
    trajectory_points: int  # removed from the learner store
    audit_rows: int  # rows removed from the writer's queue before they were written (the store adds its own)
    outcomes: int = 0  # outcome reports removed (the store counts them)


ERASURE_COLUMNS = tuple(f.name for f in fields(Erasure))

# What a platform may report happened after an analysed text (POST /v1/outcomes); "other" with a label.
OutcomeName = Literal[
    "abandoned_session",
    "asked_for_help",
    "failed_next_exercise",
    "passed_next_exercise",
    "intervention_needed",
    "intervention_not_needed",
    "other",
]
OUTCOMES: tuple[str, ...] = get_args(OutcomeName)


@dataclass(frozen=True)
class Outcome:
    """What happened after one analysed text, linked to its audit row."""

    ts: datetime  # UTC, when it was reported
    tenant: str
    learner_id: str
    request_id: str
    text_index: int
    outcome: str  # one of OUTCOMES
    label: str | None  # the platform's own word for it (free, short)
    key_id: str | None  # the API key that reported it


OUTCOME_COLUMNS = tuple(f.name for f in fields(Outcome))
_LINKED_SQL = (
    "SELECT 1 FROM audit_log WHERE tenant = {p} AND learner_id = {p} AND request_id = {p} "
    "AND text_index = {p} LIMIT 1"
)


COLUMNS = tuple(f.name for f in fields(AuditRow))
JSON_COLUMNS = frozenset({"labels", "reasons", "features"})


def migrations(dialect: str) -> list[tuple[str, str]]:
    """``(version, sql)`` for every migration of a dialect, in order."""
    out = []
    for path in sorted((MIGRATIONS_DIR / dialect).glob("*.sql")):
        if not MIGRATION_NAME.match(path.name):
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        out.append((path.stem, path.read_text(encoding="utf-8")))
    if not out:
        raise ValueError(f"no migrations in {MIGRATIONS_DIR / dialect}")
    return out


@dataclass(frozen=True)
class Before:
    """A position in a learner's history (newest first): the rows strictly older than ``ts`` or, with
    ``id``, older than (``ts``, ``id``) — so that a page boundary inside one request loses no row."""

    ts: datetime  # timezone-aware
    id: int | None = None


class AuditStore(Protocol):
    dialect: str

    def open(self) -> None: ...
    def insert(self, rows: Sequence[AuditRow]) -> None: ...
    def delete_before(self, cutoff: datetime) -> int: ...
    def history(
        self, tenant: str, learner_id: str, limit: int, before: Before | None
    ) -> list[AuditEntry]: ...
    def erase_learner(self, tenant: str, learner_id: str, erasure: Erasure) -> int: ...
    def record_outcome(self, outcome: Outcome) -> int | None: ...
    def close(self) -> None: ...


def _history_sql(placeholder: str, before: Before | None) -> str:
    where = f"tenant = {placeholder} AND learner_id = {placeholder}"
    if before is not None and before.id is not None:
        where += f" AND (ts, id) < ({placeholder}, {placeholder})"
    elif before is not None:
        where += f" AND ts < {placeholder}"
    return (
        f"SELECT {', '.join(COLUMNS)}, id FROM audit_log WHERE {where} "
        f"ORDER BY ts DESC, id DESC LIMIT {placeholder}"
    )


def _history_params(tenant: str, learner_id: str, limit: int, before: Before | None, ts: Any) -> list[Any]:
    params: list[Any] = [tenant, learner_id]
    if before is not None:
        params.append(ts)
        if before.id is not None:
            params.append(before.id)
    return [*params, limit]


# ------------------------------------------------------------------------------------------------
# SQLite


def sqlite_ts(ts: datetime) -> str:
    # isoformat pads the year to four digits: every stored value has the same width and sorts as a time
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _split_statements(script: str) -> list[str]:
    """Statements of an SQL script, split where SQLite itself says a statement is complete."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = "\n".join(line for line in buffer.splitlines() if not line.strip().startswith("--")).strip()
    if leftover:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {leftover[:80]!r}")
    return statements


C = TypeVar("C", sqlite3.Connection, "psycopg.Connection[tuple[Any, ...]]")


def _migrated(conn: C, migrate: Callable[[C], None]) -> C:
    """``conn`` once migrated; closed (never kept half set up) when that fails."""
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _insert_sql(table: str, columns: Sequence[str], placeholder: str) -> str:
    """INSERT of one row of ``columns`` (fixed names from this module, never input) in a dialect's style."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))})"


def _entry(raw: Sequence[Any], decode: Callable[[dict[str, Any]], None]) -> AuditEntry:
    values = dict(zip((*COLUMNS, "id"), raw, strict=True))
    decode(values)
    return AuditEntry(**values)


def _sqlite_values(values: dict[str, Any]) -> None:
    values["ts"] = datetime.fromisoformat(values["ts"])  # 3.11 reads the trailing Z as UTC
    values["cached"] = bool(values["cached"])
    for name in JSON_COLUMNS:
        values[name] = None if values[name] is None else json.loads(values[name])


def _postgres_values(values: dict[str, Any]) -> None:
    values["ts"] = values["ts"].astimezone(UTC)  # psycopg types the rest already


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._connection()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; every write below opens its own.
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn = _migrated(conn, self._migrate)
        return self._conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[None]:
        conn.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")  # readers (an auditor's sqlite3 shell) never block us
        # IMMEDIATE takes the write lock first: a second process waits, then sees the versions applied.
        with self._transaction(conn, "IMMEDIATE"):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for version, script in migrations(self.dialect):
                if version in applied:
                    continue
                for statement in _split_statements(script):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, sqlite_ts(datetime.now(UTC))),
                )

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection()
        except BaseException:
            self.close()  # whatever went wrong, the next call starts from a fresh connection
            raise

    def insert(self, rows: Sequence[AuditRow]) -> None:
        sql = _insert_sql("audit_log", COLUMNS, "?")
        params = [self._params(row) for row in rows]
        with self._use() as conn, self._transaction(conn):
            conn.executemany(sql, params)

    @staticmethod
    def _params(row: AuditRow) -> tuple[Any, ...]:
        values = dict(zip(COLUMNS, astuple(row), strict=True))
        values["ts"] = sqlite_ts(row.ts)
        for name in JSON_COLUMNS:
            values[name] = None if values[name] is None else json.dumps(values[name])
        return tuple(values[c] for c in COLUMNS)

    def delete_before(self, cutoff: datetime) -> int:
        with self._use() as conn, self._transaction(conn):
            conn.execute("DELETE FROM audit_outcomes WHERE ts < ?", (sqlite_ts(cutoff),))
            return conn.execute("DELETE FROM audit_log WHERE ts < ?", (sqlite_ts(cutoff),)).rowcount

    def record_outcome(self, outcome: Outcome) -> int | None:
        """Store ``outcome`` if its audit row exists (same tenant and learner); its id, else None."""
        linked = _LINKED_SQL.format(p="?")
        insert = _insert_sql("audit_outcomes", OUTCOME_COLUMNS, "?")
        values = {**outcome.__dict__, "ts": sqlite_ts(outcome.ts)}
        with self._use() as conn, self._transaction(conn, "IMMEDIATE"):
            key = (outcome.tenant, outcome.learner_id, outcome.request_id, outcome.text_index)
            if conn.execute(linked, key).fetchone() is None:
                return None
            return conn.execute(insert, tuple(values[c] for c in OUTCOME_COLUMNS)).lastrowid

    def history(self, tenant: str, learner_id: str, limit: int, before: Before | None) -> list[AuditEntry]:
        ts = sqlite_ts(before.ts) if before else None
        with self._use() as conn:
            found = conn.execute(
                _history_sql("?", before), _history_params(tenant, learner_id, limit, before, ts)
            ).fetchall()
        return [_entry(raw, _sqlite_values) for raw in found]

    def erase_learner(self, tenant: str, learner_id: str, erasure: Erasure) -> int:
        """Delete the learner's rows and record the erasure, in one transaction; rows deleted."""
        insert = _insert_sql("audit_erasures", ERASURE_COLUMNS, "?")
        with self._use() as conn, self._transaction(conn, "IMMEDIATE"):
            deleted = conn.execute(
                "DELETE FROM audit_log WHERE tenant = ? AND learner_id = ?", (tenant, learner_id)
            ).rowcount
            outcomes = conn.execute(
                "DELETE FROM audit_outcomes WHERE tenant = ? AND learner_id = ?", (tenant, learner_id)
            ).rowcount
            values = {**erasure.__dict__, "ts": sqlite_ts(erasure.ts), "outcomes": outcomes}
            values["audit_rows"] += deleted
            conn.execute(insert, tuple(values[c] for c in ERASURE_COLUMNS))
        return int(deleted)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


# ------------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresStore:
    dialect = "postgres"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn  # may hold a password: never logged, never in repr
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return "PostgresStore(<dsn hidden>)"

    def open(self) -> None:
        self._connection()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,  # explicit transactions below
                connect_timeout=PG_CONNECT_TIMEOUT_S,
                application_name=APPLICATION_NAME,
            )
            self._conn = _migrated(conn, self._migrate)
        return self._conn

    def _migrate(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        conn.execute(f"SET statement_timeout = {PG_STATEMENT_TIMEOUT_MS}")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for version, script in migrations(self.dialect):
                if version not in applied:
                    # No parameters: psycopg sends the whole script as one simple query.
                    conn.execute(script)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))

    @contextmanager
    def _use(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        try:
            yield self._connection()
        except BaseException:
            self.close()
            raise

    def insert(self, rows: Sequence[AuditRow]) -> None:
        sql = _insert_sql("audit_log", COLUMNS, "%s")
        params = [
            tuple(
                Jsonb(v) if c in JSON_COLUMNS and v is not None else v
                for c, v in zip(COLUMNS, astuple(row), strict=True)
            )
            for row in rows
        ]
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, params)

    def delete_before(self, cutoff: datetime) -> int:
        with self._use() as conn, conn.transaction():
            conn.execute("DELETE FROM audit_outcomes WHERE ts < %s", (cutoff,))
            return conn.execute("DELETE FROM audit_log WHERE ts < %s", (cutoff,)).rowcount

    def record_outcome(self, outcome: Outcome) -> int | None:
        """Store ``outcome`` if its audit row exists (same tenant and learner); its id, else None."""
        linked = _LINKED_SQL.format(p="%s")
        insert = _insert_sql("audit_outcomes", OUTCOME_COLUMNS, "%s") + " RETURNING id"
        with self._use() as conn, conn.transaction():
            key = (outcome.tenant, outcome.learner_id, outcome.request_id, outcome.text_index)
            if conn.execute(linked, key).fetchone() is None:
                return None
            row = conn.execute(insert, tuple(outcome.__dict__[c] for c in OUTCOME_COLUMNS)).fetchone()
            return None if row is None else int(row[0])

    def history(self, tenant: str, learner_id: str, limit: int, before: Before | None) -> list[AuditEntry]:
        with self._use() as conn:
            found = conn.execute(
                _history_sql("%s", before),
                _history_params(tenant, learner_id, limit, before, before.ts if before else None),
            ).fetchall()
        return [_entry(raw, _postgres_values) for raw in found]

    def erase_learner(self, tenant: str, learner_id: str, erasure: Erasure) -> int:
        """Delete the learner's rows and record the erasure, in one transaction; rows deleted."""
        insert = _insert_sql("audit_erasures", ERASURE_COLUMNS, "%s")
        with self._use() as conn, conn.transaction():
            deleted = conn.execute(
                "DELETE FROM audit_log WHERE tenant = %s AND learner_id = %s", (tenant, learner_id)
            ).rowcount
            outcomes = conn.execute(
                "DELETE FROM audit_outcomes WHERE tenant = %s AND learner_id = %s", (tenant, learner_id)
            ).rowcount
            values = {**erasure.__dict__, "outcomes": outcomes}
            values["audit_rows"] += deleted
            conn.execute(insert, tuple(values[c] for c in ERASURE_COLUMNS))
        return int(deleted)

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
