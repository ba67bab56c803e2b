"""Time one learner's erasure with 10,000 audit rows, on SQLite and on PostgreSQL (pgserver's bundled
server): ``.venv/bin/python -m tests.support.erasure_timing [rows]``. The number is in docs/audit.md."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

from gateway.backends.audit.store import PostgresStore, SqliteStore
from tests.support.gateway import erase_many


def main(rows: int = 10_000) -> None:
    with tempfile.TemporaryDirectory(prefix="erasure-timing-") as tmp:
        sqlite = SqliteStore(Path(tmp) / "audit.sqlite3")
        try:
            sys.stdout.write(f"sqlite:   erased {rows} rows in {erase_many(sqlite, rows) * 1000:.1f} ms\n")
        finally:
            sqlite.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            postgres = PostgresStore(server.get_uri())
            try:
                sys.stdout.write(
                    f"postgres: erased {rows} rows in {erase_many(postgres, rows) * 1000:.1f} ms\n"
                )
            finally:
                postgres.close()
        finally:
            server.cleanup()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
