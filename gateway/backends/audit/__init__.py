"""The optional audit trail's backend: one row per analysed text (who, when, which model, what was
decided, how fast), in SQLite or PostgreSQL (``store``), written off the request path by a buffered
writer behind the breaker (``writer``). ``gateway.services`` builds it from the settings; the core
pipeline submits rows (``gateway.core.audit``); the history route reads them back."""

from gateway.backends.audit.store import AuditEntry, AuditRow, Before, Erasure, PostgresStore, SqliteStore
from gateway.backends.audit.writer import AuditTrail

__all__ = ["AuditEntry", "AuditRow", "AuditTrail", "Before", "Erasure", "PostgresStore", "SqliteStore"]
