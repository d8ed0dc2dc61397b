"""A brand-new SQLite DB starts as a copy of a template DB that the migrations made.

Making the schema with Alembic means importing SQLAlchemy and Alembic first, which takes longer than all the
DB work of a quick sweep, and every new DB would pay it (docs/performance.md has the figures). So a wheel ships
a template that its build made by running the migrations (hatch_build.py); without one (a checkout, an editable
install), the first new DB at a given set of migrations has them run on a template in the user's cache
directory as well. Every other new SQLite DB gets the template's pages through SQLite's backup API, which needs
neither library. The schema is still made
only by the migrations: the template is their output, named after a digest of the migration files, so a
changed migration makes a new one. Upgrades, DBs holding tables of their own, and PostgreSQL go through
Alembic as before.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from jobqueue.paths import SCHEMA_HEAD, data_path, file_lock, sqlite_readonly_connection


def migrations_digest(migrations: Path | None = None) -> str:
    """A digest of what the migrations make: env.py and every file in versions/. CRC-32 and Adler-32 of the same
    bytes, and their length: a name that tells edits apart, not a defence against forgery (a template is only ever
    made by this user's own migrations). hashlib's import (OpenSSL) took 6 ms of every launch into a new DB."""
    import zlib

    root = migrations or data_path("migrations")
    versions = root / "versions"
    files = [root / "env.py", *(versions / name for name in sorted(os.listdir(versions)) if name.endswith(".py"))]
    data = b"".join(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0" for path in files)
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}{len(data):x}"


@functools.cache
def template_name() -> str:
    return f"schema-{SCHEMA_HEAD}-{migrations_digest()}.db"


def shipped_template() -> Path:
    """The template a wheel carries, made by its build (hatch_build.py); a checkout or editable install has none."""
    return Path(__file__).parent / "_data" / template_name()


def cached_template() -> Path:
    """The template made at the first new DB: $XDG_CACHE_HOME/jobqueue, else ~/.cache/jobqueue."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):  # the XDG spec: a relative path is to be ignored
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jobqueue" / template_name()


def copy_template(target: sqlite3.Connection, migrate: Callable[[Path], None]) -> bool:
    """Give the empty DB behind `target` the template's pages: the shipped one, else the cached one, made with
    migrate(path) first if there is none. False, with the DB left empty, when no sound template can be had (an
    unwritable cache directory, a damaged template): the caller then runs the migrations on the DB itself."""
    shipped = shipped_template()
    if _is_sound(shipped):
        return _backup(shipped, target)
    cached = cached_template()
    if not cached.exists():
        try:
            _make(cached, migrate)
        except Exception:  # noqa: BLE001 - whatever stopped it, the migrations on the DB itself say it, or succeed
            return False
    if not _is_sound(cached):
        cached.unlink(missing_ok=True)  # the next new DB makes it again
        return False
    return _backup(cached, target)


def _is_sound(template: Path) -> bool:
    """A whole SQLite file at the newest schema."""
    if not template.is_file():
        return False
    try:
        conn = sqlite_readonly_connection(template)
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return row == (SCHEMA_HEAD,) and conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _backup(template: Path, target: sqlite3.Connection) -> bool:
    try:
        source = sqlite_readonly_connection(template)
        try:
            source.backup(target)  # one step, in one write transaction on the target: all of it or nothing
        finally:
            source.close()
    except sqlite3.Error:
        return False
    return True


def _make(path: Path, migrate: Callable[[Path], None]) -> None:
    """Run the migrations on a file beside the template, then move it into place: a template is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():  # another process made it while we waited
            return
        partial = path.with_name(path.name + ".partial")  # only the lock's holder writes it: left over, it is stale
        for stale in (partial, partial.with_name(partial.name + "-journal")):
            stale.unlink(missing_ok=True)
        migrate(partial)
        os.replace(partial, path)
