"""Where things are, without importing SQLAlchemy: the DB URL, shipped data files, read-only SQLite."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

DEFAULT_DB = "jobqueue.db"
SCHEMA_HEAD = "0005"  # the newest migration; a test checks it against migrations/versions
BUSY_TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_url(db: str | None) -> str:
    """--db value (a file path or an SQLAlchemy URL), else $JQ_DB, else ./jobqueue.db -> a URL."""
    db = db or os.environ.get("JQ_DB") or DEFAULT_DB
    if "://" in db:
        _passwords.update(p for password in _url_passwords(db) for p in (password, unquote(password)) if p)
        return db
    return f"sqlite:///{os.path.abspath(db)}"


# --- passwords in URLs --------------------------------------------------------------------------------
# A password is never shown, written to a file or put on a command line (which every user of a node can read).
# These read a URL as SQLAlchemy does: `user:password@` right after the scheme, the password running to the
# first "@", or a `password=` in the query, which SQLAlchemy hands to the driver.
_USERINFO_PASSWORD = re.compile(r"^([\w+]+://[^:/]*):([^@]*)@")
_QUERY_PASSWORD = re.compile(r"([?&])password=([^&]*)")
_passwords: set[str] = set()  # of every URL this process has resolved, for scrub()
REDACTED = "***"


def _url_passwords(url: str) -> list[str]:
    userinfo = _USERINFO_PASSWORD.match(url)
    return ([userinfo.group(2)] if userinfo else []) + [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]


def has_password(url: str) -> bool:
    return bool(_url_passwords(url))


def redacted(url: str) -> str:
    """The URL as it may be shown: its password, if it has one, as ***."""
    url = _USERINFO_PASSWORD.sub(rf"\1:{REDACTED}@", url, count=1)
    return _QUERY_PASSWORD.sub(rf"\1password={REDACTED}", url)


def without_password(url: str) -> str:
    """The URL for a place that must find the password elsewhere (PGPASSFILE, ~/.pgpass, PGSERVICE)."""
    url = _USERINFO_PASSWORD.sub(r"\1@", url, count=1)
    base, question, query = url.partition("?")
    kept = [part for part in query.split("&") if not part.startswith("password=")]
    return base + (question + "&".join(kept) if any(kept) else "")


def scrub(text: str) -> str:
    """The text with every password of the URLs this process has resolved shown as ***: for error messages
    that quote a driver or a server, which may repeat what they were given."""
    for password in sorted(_passwords, key=len, reverse=True):
        text = text.replace(password, REDACTED)
    return text


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


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


def lock_file(path: Path) -> int:
    """Waits for an exclusive lock on `path` (made if missing, left behind) and returns the descriptor that holds
    it: closing it releases the lock, and so does the holder's end, however it ends. For what only one process may
    do at a time, such as making a new DB's schema. flock(2) is what the filelock package calls on POSIX, and
    jobqueue is POSIX-only (pidfds, posix_spawn); the package's import took ~40 ms of a 0.25 s `jq launch`
    (docs/performance.md). O_NOFOLLOW: a symlink planted at the lock's path is refused, not followed (the
    package's CVE-2025-68146)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """lock_file() for the length of a `with`."""
    fd = lock_file(path)
    try:
        yield
    finally:
        os.close(fd)


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
