"""Open a queue database: URL -> engine, SQLite pragmas, and the migrations applied on open.

SQLite is the default (one file, WAL, a busy timeout); PostgreSQL when many machines share a queue.
The schema is only ever made by the Alembic migrations, applied under a file lock (SQLite) or an
advisory lock (PostgreSQL) so that many workers opening a fresh DB at once do not race. A new SQLite DB
is a copy of the template DB they made (template_db.py).

The queue's statements run as plain SQL on the driver's own connection (see sql.py and queue.py). So an
SQLite DB at the newest schema is opened and used with the standard library alone: SQLAlchemy, whose
import takes longer than a whole quick sweep's DB work, is imported only for what needs it -- the
migrations, `jq db copy`, and PostgreSQL's connection pool.
"""

from __future__ import annotations

import itertools
import os
import random
import select
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jobqueue import sql
from jobqueue.errors import UserError
from jobqueue.paths import (
    BUSY_TIMEOUT_MS,
    SCHEMA_HEAD,
    SQLITE_HEADER,
    data_path,
    lock_file,
    redacted,
    resolve_url,
    scrub,
    sqlite_path,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

PG_MIGRATION_LOCK = 0x6A6F6271  # "jobq", the advisory lock key that serializes migrations
NETWORK_FILESYSTEMS = set(os.environ.get("JQ_NETWORK_FILESYSTEMS", "").split()) | {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "beegfs",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.glusterfs",
    "ceph",
}

T = TypeVar("T")


def filesystem_type(path: Path) -> str:
    """The type of the file system holding `path`, from /proc/mounts (longest matching mount point)."""
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3:
                    mount_point = parts[1].replace("\\040", " ")
                    if str(path).startswith(mount_point) and len(mount_point) > len(best):
                        best, fstype = mount_point, parts[2]
    except OSError:
        pass
    return fstype


@dataclass
class Database:
    url: str
    path: Path | None  # the file, for SQLite
    journal: str = "WAL"  # SQLite's journal mode: WAL, or a rollback journal on a network file system
    _engine: sa.Engine | None = None

    # SQLite lets one transaction write at a time, and a connection that finds the file locked sleeps (1 ms, 2 ms,
    # 5 ms, ...) before it tries again. A worker's threads (its loop, its heartbeat) take turns on this lock instead,
    # and each is woken the moment the one before it commits; other processes still wait in SQLite's busy handler.
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: list = field(default_factory=list)  # transact()'s requests waiting for the next group commit
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: list = field(default_factory=list)  # SQLite connections for the driver path, between transactions
    _idle_lock: threading.Lock = field(default_factory=threading.Lock)
    _kept: threading.local = field(default_factory=threading.local)  # kept_connection()'s, per thread

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    @property
    def dialect(self) -> str:
        return sql.SQLITE if self.is_sqlite else sql.POSTGRESQL

    @property
    def engine(self) -> sa.Engine:
        """SQLAlchemy's engine, made at first use: only migrations, `jq db copy` and PostgreSQL need it."""
        if self._engine is None:
            self._engine = _sqlite_engine(self) if self.is_sqlite else _postgres_engine(self.url)
        return self._engine

    @contextmanager
    def begin(self, write: bool = True) -> Iterator[sa.Connection]:
        """One SQLAlchemy transaction. On SQLite a write transaction takes the write lock at once (BEGIN IMMEDIATE)."""
        with self.engine.connect() as conn:
            if self.is_sqlite and not write:
                conn = conn.execution_options(sqlite_begin="BEGIN")
            with conn.begin():
                yield conn

    def transact(self, fn: Callable[[Transaction], T], write: bool = True, attempts: int = 8) -> T:
        """Run fn(tx) in one transaction on the driver's connection, retried with backoff while the DB is busy.

        On SQLite the threads of one process commit their writes as a group: while one transaction runs, the
        others' functions queue up, and the next thread to get the write lock runs them all in one transaction.
        Beginning and committing cost more than the worker's statements themselves, and the threads would only
        have taken turns anyway."""
        if not (self.is_sqlite and write):
            return self._transaction([fn], write, attempts)[0]
        request = _Request(fn)
        with self._pending_lock:
            self._pending.append(request)
        with self._write_lock:
            if not request.done:  # nobody took it along: we run what is waiting, ours included
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                try:
                    results = self._transaction([r.fn for r in batch], write, attempts)
                except BaseException as exc:
                    for r in batch:
                        r.error, r.done = exc, True
                else:
                    for r, result in zip(batch, results):
                        r.result, r.done = result, True
        if request.error is not None:
            raise request.error
        return request.result

    def _transaction(self, fns: list[Callable], write: bool, attempts: int) -> list:
        def once():
            with self._connection() as conn:
                tx = Transaction(self.dialect, conn.cursor())
                if self.is_sqlite:  # in autocommit mode (see configure_sqlite): we say where transactions start
                    tx.cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    results = [fn(tx) for fn in fns]
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                return results

        return _retry_while_busy(once, self._busy_errors(), attempts)

    def statement(self, fn: Callable[[Transaction], T], attempts: int = 8) -> T:
        """fn(tx) where fn runs one statement, which is atomic by itself: on PostgreSQL in autocommit mode, saving the
        round trips of BEGIN and COMMIT (a claim is one round trip); on SQLite as transact() runs it."""
        if self.is_sqlite:
            return self.transact(fn, attempts=attempts)

        def once():
            with self._connection() as conn:
                driver = conn.dbapi_connection
                driver.autocommit = True
                try:
                    return fn(Transaction(self.dialect, conn.cursor()))
                finally:
                    if not driver.closed:
                        driver.autocommit = False

        return _retry_while_busy(once, self._busy_errors(), attempts)

    @contextmanager
    def reading(self) -> Iterator[Transaction]:
        """One read transaction held while the caller goes through pages of rows (Transaction.dict_pages): one
        snapshot for a listing too big to read at once."""
        with self._connection() as conn:
            tx = Transaction(self.dialect, conn.cursor())
            if self.is_sqlite:
                tx.cursor.execute("BEGIN")
            try:
                yield tx
            finally:
                conn.rollback()

    @contextmanager
    def kept_connection(self) -> Iterator[None]:
        """Within the block, this thread's statements and transactions share one PostgreSQL connection rather than
        each taking one from the pool and giving it back, which costs a quarter of a claim's CPU: for a thread that
        claims and records all a worker's jobs. A connection the server closed is replaced at its next use, as the
        pool would; it goes back to the pool when the block ends. SQLite: no change."""
        if self.is_sqlite:
            yield
            return
        self._kept.active = True
        try:
            yield
        finally:
            self._kept.active = False
            raw, self._kept.conn = getattr(self._kept, "conn", None), None
            if raw is not None:
                raw.close()

    @contextmanager
    def _kept_postgres(self):
        raw = getattr(self._kept, "conn", None)
        if raw is not None and _closed_by_server(raw.dbapi_connection):
            self._drop_kept(raw)
            raw = None
        if raw is None:
            raw = self._kept.conn = self.engine.raw_connection()
        try:
            yield raw
        except BaseException:
            driver = raw.dbapi_connection
            if driver is None or driver.closed or getattr(driver, "broken", False):
                self._drop_kept(raw)
            raise

    def _drop_kept(self, raw) -> None:
        self._kept.conn = None
        raw.invalidate()
        raw.close()

    @contextmanager
    def _connection(self):
        """A driver connection: SQLite's from our own small pool, PostgreSQL's from SQLAlchemy's (or the one this
        thread keeps, see kept_connection())."""
        if not self.is_sqlite and getattr(self._kept, "active", False):
            with self._kept_postgres() as raw:
                yield raw
            return
        if not self.is_sqlite:
            raw = self.engine.raw_connection()
            try:
                yield raw
            except BaseException:
                # A connection the server dropped goes, not back to the pool, whose rollback on it would fail and
                # log a traceback.
                driver = raw.dbapi_connection
                if driver is None or driver.closed or getattr(driver, "broken", False):
                    raw.invalidate()
                raise
            finally:
                raw.close()
            return
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect_sqlite(self.path, self.journal)
        try:
            yield conn
        except BaseException:
            conn.close()  # it may be in any state: a new one is cheap
            raise
        with self._idle_lock:
            self._idle.append(conn)

    def _busy_errors(self) -> type[Exception]:
        return sqlite3.OperationalError if self.is_sqlite else self.engine.dialect.loaded_dbapi.OperationalError

    def dispose(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._engine is not None:
            self._engine.dispose()


def _retry_while_busy(once: Callable[[], T], errors: type[Exception], attempts: int) -> T:
    """once(), again with backoff while it fails because the database is busy (locked, or a deadlock)."""
    for attempt in range(attempts):
        try:
            return once()
        except errors as exc:
            if not _is_busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


RETRY_FIRST = 0.5  # seconds before the first retry while the DB is unreachable; doubling up to RETRY_MAX
RETRY_MAX = 5.0


class Unreachable(Exception):
    """The DB stayed unreachable and the caller stopped waiting for it."""


def is_unreachable(exc: BaseException) -> bool:
    """The error says the PostgreSQL server cannot be reached: refused, dropped, shutting down, failing over.
    SQLite's busy file is not one of them: Database waits for it and retries, and what is left is a real error."""
    if isinstance(exc, sqlite3.Error):
        return False
    sa = sys.modules.get("sqlalchemy")
    if sa is not None and isinstance(exc, sa.exc.DisconnectionError):  # the pool found its connections closed
        return True
    if sa is not None and isinstance(exc, sa.exc.DBAPIError):
        if isinstance(exc.orig, sqlite3.Error):
            return False
        return bool(exc.connection_invalidated) or isinstance(exc, sa.exc.OperationalError)
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


class DbContact:
    """One process's contact with the DB through outages: calls that wait and retry while it is unreachable, one
    line when contact is lost and one when it is back (never a traceback), and how long contact has lasted
    unbroken, which a reaper needs before it may judge others by their heartbeats (reaper.py)."""

    def __init__(self, say: Callable[[str], None], doing: Callable[[], str] = lambda: ""):
        self.say = say
        self.doing = doing  # what goes on meanwhile, for the line: "4 jobs still running"
        self._lock = threading.Lock()
        self.down_since: float | None = None  # monotonic; None while in contact
        self.outages = 0  # how many times contact was lost
        self._up_since: float | None = None  # monotonic: the first success since the last failure

    def once(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, fn()) or, if the DB is unreachable, (False, None); any other error is raised."""
        try:
            result = fn()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._lost()
            return False, None
        self._reached()
        return True, result

    def call(self, fn: Callable[[], T], give_up: Callable[[], bool] | None = None) -> T:
        """fn(), retried with backoff while the DB is unreachable; Unreachable once give_up() says so."""
        delay = RETRY_FIRST
        while True:
            ok, result = self.once(fn)
            if ok:
                return result  # type: ignore[return-value]  # fn's own result, None included
            if give_up is not None and give_up():
                raise Unreachable(f"database unreachable for {self.down_for():.0f} s")
            time.sleep(delay * (0.5 + random.random()))  # jitter: a cluster's workers must not come back in step
            delay = min(RETRY_MAX, delay * 2)

    def down_for(self) -> float:
        down = self.down_since
        return 0.0 if down is None else time.monotonic() - down

    def in_contact_for(self) -> float:
        """Seconds since contact was (re)gained, without a failure since; 0 while unreachable."""
        with self._lock:
            if self.down_since is not None or self._up_since is None:
                return 0.0
            return time.monotonic() - self._up_since

    def _lost(self) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
            self._up_since = None
            self.outages += 1
        doing = self.doing()
        self.say(f"database unreachable since {time.strftime('%H:%M:%S')}{', ' + doing if doing else ''}; retrying")

    def _reached(self) -> None:
        with self._lock:
            down, self.down_since = self.down_since, None
            if self._up_since is None:
                self._up_since = time.monotonic()
        if down is not None:
            self.say(f"database back after {time.monotonic() - down:.0f} s")


@dataclass
class _Request:
    fn: Callable[[Transaction], Any]
    done: bool = False
    result: Any = None  # what fn returned, for the transact() call that queued it (requests of one batch differ)
    error: BaseException | None = None


class Cursor(Protocol):
    """A DB-API cursor: sqlite3's, or psycopg's from SQLAlchemy's pool."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def execute(self, query: str, params: Any = ..., /) -> object: ...

    def executemany(self, query: str, rows: Any, /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...  # a list of rows (SQLAlchemy's DBAPICursor says a Sequence)

    def fetchmany(self, size: int = ..., /) -> Any: ...

    @property
    def connection(self) -> Any: ...


Params = dict | Sequence | None  # named (`:name`) or positional (`?`) parameters


@dataclass
class Transaction:
    """Plain SQL (see sql.py) on a driver cursor, inside one transaction."""

    dialect: str
    cursor: Cursor

    def execute(self, query: str, params: Params = None) -> int:
        """Run a statement; the number of rows it changed."""
        self.cursor.execute(sql.render(query, self.dialect), params or {})
        return self.cursor.rowcount

    def executemany(self, query: str, rows: list) -> None:
        self.cursor.executemany(sql.render(query, self.dialect), rows)

    def first(self, query: str, params: Params = None) -> tuple | None:
        self.execute(query, params)
        row = self.cursor.fetchone()
        self.cursor.fetchall()  # drain it: a statement with RETURNING ends only when its rows are read
        return row

    def one(self, query: str, params: Params = None) -> tuple:
        """The row of a statement that always returns one (count(*), INSERT ... RETURNING)."""
        row = self.first(query, params)
        if row is None:
            raise AssertionError(f"no row from: {query}")
        return row

    def all(self, query: str, params: Params = None) -> list[tuple]:
        self.execute(query, params)
        return self.cursor.fetchall()

    def dicts(self, query: str, params: Params = None) -> list[dict]:
        """The rows as dicts, JSON and time columns decoded."""
        rows = self.all(query, params)
        if not rows:
            return []
        to_dict = sql.row_converter(self.cursor.description)
        return [to_dict(r) for r in rows]

    def dict_pages(self, query: str, params: dict | None = None, size: int = 1000) -> Iterator[list[dict]]:
        """dicts(), `size` rows at a time, for results too big to hold. On PostgreSQL from a server-side cursor:
        psycopg's own cursor would fetch every row first."""
        conn = self.cursor.connection
        cursor = (
            conn.cursor(name=f"jq_pages_{next(_page_cursors)}") if self.dialect == sql.POSTGRESQL else conn.cursor()
        )
        try:
            cursor.execute(sql.render(query, self.dialect), params or {})
            to_dict = None
            while rows := cursor.fetchmany(size):
                to_dict = to_dict or sql.row_converter(cursor.description)
                yield [to_dict(r) for r in rows]
        finally:
            cursor.close()


_page_cursors = itertools.count()  # names for server-side cursors, unique within a connection


_opened: list[Database] = []


def close_all() -> None:
    """Close every pooled connection this process opened. On SQLite the last connection to close checkpoints
    the WAL into the DB and removes it, so readers that follow need not replay it."""
    while _opened:
        _opened.pop().dispose()


def _is_busy(exc: Exception) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock detected" in text


def open_db(db: str | None = None, *, create: bool = True) -> Database:
    """Open (and create or upgrade, when needed) the queue DB. Raises UserError with the fix on bad input."""
    url = resolve_url(db)
    if url.startswith("sqlite"):
        database = _open_sqlite(url, create)
    elif url.startswith("postgresql"):
        database = _open_postgres(url)
    else:
        raise UserError(f"--db {redacted(url)}: unsupported database; use a file path or a postgresql+psycopg:// URL")
    try:
        _ensure_schema(database)
    except _database_errors() as exc:
        database.dispose()
        raise UserError(_explain_db_error(database, exc)) from None
    _opened.append(database)
    return database


def _database_errors() -> tuple[type[Exception], ...]:
    """The errors that mean the DB itself is unusable, from whichever libraries this process has loaded."""
    errors: list[type[Exception]] = [sqlite3.DatabaseError]
    if "sqlalchemy" in sys.modules:
        errors.append(sys.modules["sqlalchemy"].exc.DatabaseError)
    if "psycopg" in sys.modules:
        errors.append(sys.modules["psycopg"].DatabaseError)
    return tuple(errors)


def _open_sqlite(url: str, create: bool) -> Database:
    path = sqlite_path(url)
    if path is None:
        raise UserError(
            f"--db {redacted(url)}: not an SQLite URL jobqueue can open; give a file path or sqlite:///PATH"
        )
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    if not path.parent.is_dir():
        raise UserError(f"--db {shown}: directory {path.parent} does not exist; create it or choose another path")
    if path.exists():
        if path.is_dir():
            raise UserError(f"--db {shown}: is a directory; give a file path such as {shown}/jobqueue.db")
        with open(path, "rb") as f:
            header = f.read(16)
        if header and header != SQLITE_HEADER:
            raise UserError(f"--db {shown}: is not an SQLite database; point --db at a jobqueue DB or a new file")
    elif not create:
        raise UserError(f"--db {shown}: no such database; run `jq enqueue SWEEP` first or check --db / $JQ_DB")
    elif not os.access(path.parent, os.W_OK):
        raise UserError(f"--db {shown}: directory {path.parent} is not writable; choose a writable place for the DB")

    journal = "WAL"
    fstype = filesystem_type(path.parent.resolve())
    if fstype in NETWORK_FILESYSTEMS:
        # WAL keeps its index in shared memory, which a network file system does not share between hosts.
        journal = "DELETE"
        print(
            f"jq: warning: {shown} is on {fstype}, where WAL is unsafe: using a rollback journal; "
            "for workers on many hosts use --db postgresql+psycopg://...",
            file=sys.stderr,
        )
    return Database(url=url, path=path, journal=journal)


def connect_sqlite(path: Path, journal: str) -> sqlite3.Connection:
    """A connection for the driver path (any thread may use it, one at a time)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    configure_sqlite(conn, path, journal)
    return conn


def configure_sqlite(conn: sqlite3.Connection, path: Path, journal: str) -> None:
    """Every connection, ours or SQLAlchemy's: autocommit mode (we say where transactions begin), waits for a
    busy DB, foreign keys, and the journal mode (which only a writable directory can change)."""
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    if os.access(path.parent, os.W_OK):
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.upper() != journal:
            conn.execute(f"PRAGMA journal_mode={journal}")


def _sqlite_engine(database: Database) -> sa.Engine:
    import sqlalchemy as sa
    from sqlalchemy import event

    # The URL is made from the path as it is: SQLAlchemy would read a "%41" in the URL's path as an "A".
    url = sa.engine.URL.create("sqlite", database=str(database.path))
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        configure_sqlite(dbapi_conn, database.path, database.journal)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN IMMEDIATE"))

    return engine


def _open_postgres(url: str) -> Database:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise UserError(
            'PostgreSQL needs psycopg 3: pip install "jobqueue[postgres]" (or pip install "psycopg[binary]")'
        ) from None
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    import sqlalchemy as sa

    database = Database(url=url, path=None)
    try:
        database.engine  # noqa: B018 - made now, so that a bad URL is reported as one
    except (sa.exc.ArgumentError, ValueError) as exc:  # an unknown driver, a port that is not a number
        raise UserError(
            f"--db {redacted(url)}: not a PostgreSQL URL SQLAlchemy can read ({scrub(str(exc))}); "
            "write postgresql+psycopg://USER@HOST:PORT/DBNAME"
        ) from None
    return database


CONNECT_TIMEOUT = 10  # seconds: a server that does not answer is down, not slow; its callers retry (DbContact)


def _postgres_engine(url: str) -> sa.Engine:
    import sqlalchemy as sa
    from sqlalchemy import event

    connect_args = {} if "connect_timeout=" in url else {"connect_timeout": CONNECT_TIMEOUT}
    engine = sa.create_engine(url, connect_args=connect_args)

    # In place of pool_pre_ping, whose SELECT 1 is a round trip of its own before every statement (a claim is one
    # round trip): a pooled connection the server has closed -- a restart, a terminated backend, an idle timeout --
    # has its end waiting to be read, where a live idle one has nothing to read. The pool replaces a closed one.
    @event.listens_for(engine, "checkout")
    def _check_open(dbapi_conn, _record, _proxy):
        if _closed_by_server(dbapi_conn):
            raise sa.exc.DisconnectionError("the server closed this pooled connection")

    return engine


def _closed_by_server(conn) -> bool:
    """An idle psycopg connection is closed, broken, or has something to read: the server hung up (a live server
    says nothing to an idle connection that did not LISTEN)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


_VERSION_TABLE = {
    sql.SQLITE: "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'",
    sql.POSTGRESQL: "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'alembic_version'",
}


def schema_revision(database: Database) -> str | None:
    """The Alembic revision the DB is at; None for a new, empty one."""

    def read(tx: Transaction) -> str | None:
        if not tx.one(_VERSION_TABLE[database.dialect])[0]:
            return None
        row = tx.first("SELECT version_num FROM alembic_version")
        return row[0] if row else None

    return database.transact(read, write=False)


def _ensure_schema(database: Database) -> None:
    """Fast path: one read. Otherwise take the lock and run the migrations (or refuse a newer DB)."""
    revision = schema_revision(database)
    if revision == SCHEMA_HEAD:
        return
    _check_known(revision, database)
    if database.is_sqlite:
        lock = Path(f"{database.path}.lock")
        try:
            held = lock_file(lock)
        except OSError as exc:
            raise UserError(
                f"--db {database.path}: cannot lock {lock} to make or upgrade its schema ({exc.strerror}); "
                "make the directory writable, or remove the lock file if it is a symlink"
            ) from None
        try:
            _migrate(database)
        finally:
            os.close(held)
    else:
        import sqlalchemy as sa

        with database.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            try:
                _migrate(database)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                conn.commit()


def _alembic_config():
    from alembic.config import Config

    config = Config(str(data_path("alembic.ini")))
    config.set_main_option("script_location", str(data_path("migrations")))
    return config


def _check_known(revision: str | None, database: Database) -> None:
    if revision is None:
        return
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    if revision not in known:
        raise UserError(
            f"{database.path or redacted(database.url)}: written by a newer jobqueue (schema {revision}); "
            "upgrade jobqueue (pip install -U jobqueue) to open it"
        )


def _migrate(database: Database) -> None:
    if schema_revision(database) == SCHEMA_HEAD:
        return  # another process migrated while we waited for the lock
    if database.is_sqlite and _is_empty(database):
        from jobqueue.template_db import copy_template

        with database._connection() as conn:
            if copy_template(conn, _migrate_new_file):
                return
    _run_migrations(database)


def _is_empty(database: Database) -> bool:
    """No table, index or view at all: a DB that holds anything of its own is migrated, never overwritten."""
    return database.transact(lambda tx: tx.one("SELECT count(*) FROM sqlite_master")[0], write=False) == 0


def _migrate_new_file(path: Path) -> None:
    """The migrations run on a new SQLite file (the template DB), which is left closed and in one piece."""
    template = Database(url=f"sqlite:///{path}", path=path, journal="DELETE")
    try:
        _run_migrations(template)
    finally:
        template.dispose()


def _run_migrations(database: Database) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["engine"] = database.engine
    command.upgrade(config, "head")


def _explain_db_error(database: Database, exc: Exception) -> str:
    where = database.path or redacted(database.url)
    text = scrub(" ".join(str(getattr(exc, "orig", exc)).split()))  # drivers' messages span lines; ours is one
    if "not a database" in text or "malformed" in text:
        return f"--db {where}: the file is damaged or not a jobqueue database ({text}); restore it or use a new file"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"--db {where}: cannot write here ({text}); make the DB and its directory writable"
    if "connect" in text:
        return f"--db {where}: cannot connect ({text}); is the server running, and are the host, port and name right?"
    return f"--db {where}: {text}"
