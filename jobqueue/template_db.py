"""A brand-new SQLite DB starts as a copy of a template DB that the migrations made.

Making the schema with Alembic means importing SQLAlchemy and Alembic first: about 0.3 s, more than all the
DB work of a quick sweep, paid by every new DB. So the first new DB at a given set of migrations has them run
on a template in the user's cache directory as well, and every later new SQLite DB gets the template's pages
through SQLite's backup API (a few milliseconds). The schema is still made only by the migrations: the
template is their output, named after a digest of the migration files, so a changed migration makes a new
one. Upgrades, DBs holding tables of their own, and PostgreSQL go through Alembic as before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable

from jobqueue.paths import SCHEMA_HEAD, data_path, sqlite_readonly_connection


def migrations_digest(migrations: Path | None = None) -> str:
    """A digest of what the migrations make: env.py and every file in versions/."""
    import hashlib

    root = migrations or data_path("migrations")
    digest = hashlib.sha256()
    for path in sorted([root / "env.py", *(root / "versions").glob("*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def template_path() -> Path:
    """Where the template for this jobqueue's migrations lives: $XDG_CACHE_HOME/jobqueue, else ~/.cache/jobqueue."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jobqueue" / f"schema-{SCHEMA_HEAD}-{migrations_digest()}.db"


def copy_template(target: sqlite3.Connection, migrate: Callable[[Path], None]) -> bool:
    """Give the empty DB behind `target` the template's pages, making the template with migrate(path) first if
    there is none. False, with the DB left empty, when no sound template can be had (an unwritable cache
    directory, a damaged template): the caller then runs the migrations on the DB itself."""
    path = template_path()
    if not path.exists():
        try:
            _make(path, migrate)
        except Exception:  # noqa: BLE001 - whatever stopped it, the migrations on the DB itself say it, or succeed
            return False
    try:
        source = sqlite_readonly_connection(path)
    except sqlite3.Error:
        return False
    try:
        if not _is_sound(source):
            path.unlink(missing_ok=True)  # the next new DB makes it again
            return False
        source.backup(target)  # one step, in one write transaction on the target: all of it or nothing
        return True
    except sqlite3.Error:
        return False
    finally:
        source.close()


def _is_sound(template: sqlite3.Connection) -> bool:
    try:
        row = template.execute("SELECT version_num FROM alembic_version").fetchone()
        return row == (SCHEMA_HEAD,) and template.execute("PRAGMA quick_check").fetchone() == ("ok",)
    except sqlite3.DatabaseError:
        return False


def _make(path: Path, migrate: Callable[[Path], None]) -> None:
    """Run the migrations on a file beside the template, then move it into place: a template is whole or absent."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():  # another process made it while we waited
            return
        partial = path.with_name(path.name + ".partial")  # only the lock's holder writes it: left over, it is stale
        for stale in (partial, partial.with_name(partial.name + "-journal")):
            stale.unlink(missing_ok=True)
        migrate(partial)
        os.replace(partial, path)
