"""Open a queue database: URL -> engine, SQLite pragmas, and the migrations applied on open.

SQLite is the default (one file, WAL, a busy timeout); PostgreSQL when many machines share a queue.
The schema is only ever made by the Alembic migrations, applied under a file lock (SQLite) or an
advisory lock (PostgreSQL) so that many workers opening a fresh DB at once do not race.
"""

from __future__ import annotations

import os
import random
import sys
import time
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event

from jobqueue.errors import UserError
from jobqueue.paths import BUSY_TIMEOUT_MS, SCHEMA_HEAD, SQLITE_HEADER, data_path, resolve_url

PG_MIGRATION_LOCK = 0x6A6F6271  # "jobq", the advisory lock key that serializes migrations
NETWORK_FILESYSTEMS = set(os.environ.get("JQ_NETWORK_FILESYSTEMS", "").split()) | {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "fuse.glusterfs", "ceph"}

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
    engine: sa.Engine
    path: Path | None  # the file, for SQLite

    # SQLite lets one transaction write at a time, and a connection that finds the file locked sleeps (1 ms, 2 ms,
    # 5 ms, ...) before it tries again. A worker's slot threads take turns on this lock instead, and each is
    # woken the moment the one before it commits; other processes still wait in SQLite's busy handler.
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _compiled: dict = field(default_factory=dict)
    _pending: list = field(default_factory=list)  # run_on_driver's requests waiting for the next group commit
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    def _writer(self, write: bool):
        return self._write_lock if write and self.is_sqlite else nullcontext()

    @contextmanager
    def begin(self, write: bool = True) -> Iterator[sa.Connection]:
        """One transaction. On SQLite a write transaction takes the write lock at once (BEGIN IMMEDIATE)."""
        with self.engine.connect() as conn:
            if self.is_sqlite and not write:
                conn = conn.execution_options(sqlite_begin="BEGIN")
            with conn.begin():
                yield conn

    def run(self, fn: Callable[[sa.Connection], T], write: bool = True, attempts: int = 8) -> T:
        """Run fn(conn) in one transaction, retried with backoff while the database says it is busy."""
        def once():
            with self._writer(write), self.begin(write) as conn:
                return fn(conn)

        return _retry_while_busy(once, sa.exc.OperationalError, attempts)

    def run_on_driver(self, fn: Callable[["DriverTransaction"], T], attempts: int = 8) -> T:
        """Like run(), for the worker's hot path: fn gets the driver's own connection and statements compiled once,
        which costs a fifth of going through SQLAlchemy's execution layer per statement.

        On SQLite the threads of one process commit as a group: while one transaction runs, the others' functions
        queue up, and the next thread to get the write lock runs them all in one transaction. Beginning and
        committing cost more than the worker's statements themselves, and the threads would only have taken
        turns anyway."""
        if not self.is_sqlite:
            return self._driver_transaction([fn], attempts)[0]
        request = _Request(fn)
        with self._pending_lock:
            self._pending.append(request)
        with self._write_lock:
            if not request.done:  # nobody took it along: we run what is waiting, ours included
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                try:
                    results = self._driver_transaction([r.fn for r in batch], attempts)
                except BaseException as exc:
                    for r in batch:
                        r.error, r.done = exc, True
                else:
                    for r, result in zip(batch, results):
                        r.result, r.done = result, True
        if request.error is not None:
            raise request.error
        return request.result

    def _driver_transaction(self, fns: list[Callable], attempts: int) -> list:
        def once():
            raw = self.engine.raw_connection()
            try:
                tx = DriverTransaction(self, raw.cursor())
                if self.is_sqlite:  # in autocommit mode (see _open_sqlite): we say where transactions start
                    tx.cursor.execute("BEGIN IMMEDIATE")
                try:
                    results = [fn(tx) for fn in fns]
                except BaseException:
                    raw.rollback()
                    raise
                raw.commit()
                return results
            finally:
                raw.close()

        return _retry_while_busy(once, self.engine.dialect.loaded_dbapi.OperationalError, attempts)

    def compiled(self, stmt: sa.Executable) -> "DriverStatement":
        statement = self._compiled.get(stmt)
        if statement is None:
            statement = self._compiled[stmt] = DriverStatement.compile(stmt, self.engine.dialect)
        return statement

    def dispose(self) -> None:
        self.engine.dispose()


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


@dataclass
class _Request:
    fn: Callable
    done: bool = False
    result: object = None
    error: BaseException | None = None


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement compiled for one dialect, with what SQLAlchemy would do to its parameters and results."""

    sql: str
    names: tuple[str, ...]  # the bind parameters, in the order a positional driver takes them
    defaults: dict  # the values written into the statement; None for those the caller gives
    positional: bool
    bind_processors: dict
    result_types: tuple  # the columns a RETURNING or SELECT gives, as the dialect sees them
    _result_processors: list = field(default_factory=list)  # made at the first result: they need the driver's type codes

    @classmethod
    def compile(cls, stmt: sa.Executable, dialect: sa.Dialect) -> "DriverStatement":
        compiled = stmt.compile(dialect=dialect)
        types = {name: bind.type for bind, name in compiled.bind_names.items()}
        defaults = {name: bind.value for bind, name in compiled.bind_names.items()}  # e.g. state = 'queued'
        names = tuple(compiled.positiontup) if compiled.positional else tuple(defaults)

        def processor(type_):
            return type_.dialect_impl(dialect)

        bind_processors = {name: p for name in names if (p := processor(types[name]).bind_processor(dialect))}
        columns = getattr(stmt, "exported_columns", ())
        return cls(
            sql=compiled.string, names=names, defaults=defaults,
            positional=compiled.positional, bind_processors=bind_processors,
            result_types=tuple(processor(c.type) for c in columns),
        )

    def parameters(self, params: dict):
        values = {**self.defaults, **params}
        for name, process in self.bind_processors.items():
            values[name] = process(values[name])
        return [values[name] for name in self.names] if self.positional else values

    def row(self, raw: tuple | None, cursor, dialect: sa.Dialect) -> tuple | None:
        if raw is None:
            return None
        if not self._result_processors:
            self._result_processors[:] = [  # one assignment: threads that race here write the same list
                type_.result_processor(dialect, column[1]) for type_, column in zip(self.result_types, cursor.description)
            ]
        return tuple(p(v) if p else v for p, v in zip(self._result_processors, raw))


@dataclass
class DriverTransaction:
    db: Database
    cursor: object

    def execute(self, stmt: sa.Executable, params: dict) -> int:
        """Run a statement; the number of rows it changed."""
        statement = self.db.compiled(stmt)
        self.cursor.execute(statement.sql, statement.parameters(params))
        return self.cursor.rowcount

    def first(self, stmt: sa.Executable, params: dict) -> tuple | None:
        statement = self.db.compiled(stmt)
        self.cursor.execute(statement.sql, statement.parameters(params))
        row = statement.row(self.cursor.fetchone(), self.cursor, self.db.engine.dialect)
        self.cursor.fetchall()  # drain it: a statement with RETURNING ends only when its rows are read
        return row


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
        raise UserError(f"--db {url}: unsupported database; use a file path or a postgresql+psycopg:// URL")
    try:
        _ensure_schema(database)
    except sa.exc.DatabaseError as exc:
        database.dispose()
        raise UserError(_explain_db_error(database, exc)) from None
    _opened.append(database)
    return database


def _open_sqlite(url: str, create: bool) -> Database:
    path = Path(sa.engine.make_url(url).database or "")
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
        print(f"jq: warning: {shown} is on {fstype}, where WAL is unsafe: using a rollback journal; "
              "for workers on many hosts use --db postgresql+psycopg://...", file=sys.stderr)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        if os.access(path.parent, os.W_OK):
            mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.upper() != journal:
                dbapi_conn.execute(f"PRAGMA journal_mode={journal}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN IMMEDIATE"))

    return Database(url=url, engine=engine, path=path)


def _open_postgres(url: str) -> Database:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise UserError(
            'PostgreSQL needs psycopg 3: pip install "jobqueue[postgres]" (or pip install "psycopg[binary]")'
        ) from None
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = sa.create_engine(url, pool_pre_ping=True)
    return Database(url=url, engine=engine, path=None)


def current_revision(conn: sa.Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _ensure_schema(database: Database) -> None:
    """Fast path: one read. Otherwise take the lock and run the migrations (or refuse a newer DB)."""
    with database.begin(write=False) as conn:
        revision = current_revision(conn)
    if revision == SCHEMA_HEAD:
        return
    _check_known(revision, database)
    if database.is_sqlite:
        from filelock import FileLock

        with FileLock(str(database.path) + ".lock"):
            _migrate(database)
    else:
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
            f"{database.path or database.url}: written by a newer jobqueue (schema {revision}); "
            "upgrade jobqueue (pip install -U jobqueue) to open it"
        )


def _migrate(database: Database) -> None:
    from alembic import command

    with database.begin(write=False) as conn:
        if current_revision(conn) == SCHEMA_HEAD:
            return  # another process migrated while we waited for the lock
    config = _alembic_config()
    config.attributes["engine"] = database.engine
    command.upgrade(config, "head")


def _explain_db_error(database: Database, exc: Exception) -> str:
    where = database.path or database.url
    text = " ".join(str(getattr(exc, "orig", exc)).split())  # drivers' messages span lines; ours is one
    if "not a database" in text or "malformed" in text:
        return f"--db {where}: the file is damaged or not a jobqueue database ({text}); restore it or use a new file"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"--db {where}: cannot write here ({text}); make the DB and its directory writable"
    if "connect" in text:
        return f"--db {where}: cannot connect ({text}); is the server running, and are the host, port and name right?"
    return f"--db {where}: {text}"
