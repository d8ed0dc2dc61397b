"""Where things are, without importing SQLAlchemy: the DB URL, shipped data files, read-only SQLite."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

DEFAULT_DB = "jobqueue.db"
SCHEMA_HEAD = "0002"  # the newest migration; a test checks it against migrations/versions
BUSY_TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_url(db: str | None) -> str:
    """--db value (a file path or an SQLAlchemy URL), else $JQ_DB, else ./jobqueue.db -> a URL."""
    db = db or os.environ.get("JQ_DB") or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{os.path.abspath(db)}"


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def data_path(name: str) -> Path:
    """A file shipped with jobqueue: inside the package in a wheel, at the repository top in a checkout."""
    packaged = Path(__file__).parent / "_data" / name
    return packaged if packaged.exists() else Path(__file__).parent.parent / name


def sqlite_readonly_connection(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, for `jq sql`, `jq status` and other readers."""
    # A URI, for mode=ro: the path is quoted, or a "#", "?" or "%" in it would be read as the URI's own.
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only=ON")
    return conn


def current_sqlite_file(url: str) -> Path | None:
    """The file, when `url` is an SQLite DB already at the newest schema (so it can be read as it is)."""
    path = sqlite_path(url)
    try:
        if path is None or not path.is_file() or path.open("rb").read(16) != SQLITE_HEADER:
            return None
        conn = sqlite_readonly_connection(path)
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return None
    return path if row and row[0] == SCHEMA_HEAD else None
