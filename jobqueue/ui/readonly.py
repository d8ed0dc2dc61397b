"""The dashboard's way into the queue DB: short read-only snapshots, one per request, that never block a worker.

SQLite: a connection opened with mode=ro and query_only (paths.sqlite_readonly_connection), one BEGIN ... ROLLBACK
per request; in WAL mode readers and the writer never wait for each other. PostgreSQL: connections from the
engine's pool, each request one REPEATABLE READ, READ ONLY transaction (a consistent view across its queries,
and any write refused by the server).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from jobqueue import sql
from jobqueue.db import Transaction, open_db
from jobqueue.paths import current_sqlite_file, redacted, resolve_url, sqlite_readonly_connection
from jobqueue.report import Reader


class Snapshot(Reader):
    """A Reader inside one read-only transaction, with its rows as dicts too (JSON and time columns decoded)."""

    def dicts(self, query: str, params: dict | None = None) -> list[dict]:
        return Transaction(self.dialect, self.conn.cursor()).dicts(query, params)


class ReadOnlyDB:
    """Where the dashboard reads: an SQLite file or a PostgreSQL URL, checked once when `jq ui` starts."""

    def __init__(self, db_arg: str | None):
        url = resolve_url(db_arg)
        self.shown = redacted(url)
        self.path = current_sqlite_file(url)
        self._database = None
        if self.path is None:
            # Not an SQLite file at the newest schema: the full open reports a missing or damaged DB, upgrades an
            # older schema as every jq command does, and connects to PostgreSQL.
            database = open_db(db_arg, create=False)
            if database.is_sqlite:
                self.path = database.path
                database.dispose()
            else:
                self._database = database
        if self.path is not None:
            self.shown = str(self.path)
        self.dialect = sql.SQLITE if self.path is not None else sql.POSTGRESQL

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        if self.path is not None:
            conn = sqlite_readonly_connection(self.path)
            conn.isolation_level = None  # we say where the transaction begins: its reads share one snapshot
            try:
                conn.execute("BEGIN")
                yield Snapshot(conn, conn.close, sql.SQLITE)
            finally:
                conn.close()  # ends the read transaction
            return
        assert self._database is not None  # not SQLite: the database opened in __init__
        raw = self._database.engine.raw_connection()
        try:
            raw.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield Snapshot(raw, raw.close, sql.POSTGRESQL)
        finally:
            try:
                raw.rollback()
            finally:
                raw.close()  # back to the pool

    def close(self) -> None:
        if self._database is not None:
            self._database.dispose()
