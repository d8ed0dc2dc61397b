"""Shell completion of run names, job ids and states, for typer's `autocompletion=` (`jq status <TAB>`).

They run while the user waits on TAB, so they read the DB the command line names (its --db, else $JQ_DB, else
./jobqueue.db) as cheaply as possible: on SQLite with the stdlib driver, read-only, with short index walks of
at most LIMIT rows. They never create a DB and never print: on any error they complete nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from jobqueue.states import JobState

LIMIT = 50
BUSY_TIMEOUT_MS = 200  # a DB locked for longer completes nothing rather than hold up the shell

# Walks the unique index on runs.name from the prefix on.
RUNS_SQL = (
    "SELECT name FROM runs WHERE name >= :prefix AND substr(name, 1, :length) = :prefix ORDER BY name LIMIT :limit"
)
# One id range of the primary key, newest first; job_ids() asks for one range per number of digits.
JOBS_SQL = (
    "SELECT j.id, j.name, j.state, r.name FROM jobs j JOIN runs r ON r.id = j.run_id "
    "WHERE j.id BETWEEN :low AND :high ORDER BY j.id DESC LIMIT :limit"
)
MAX_JOB_ID_SQL = "SELECT max(id) FROM jobs"


def _silent(complete: Callable[..., list]) -> Callable[..., list]:
    @functools.wraps(complete)
    def wrapper(*args, **kwargs) -> list:
        try:
            return complete(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a completion that fails must not print into the user's command line
            return []

    return wrapper


@_silent
def run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Run names starting with what was typed, in name order."""
    with _reader(ctx) as fetch:
        return [name for (name,) in fetch(RUNS_SQL, {"prefix": incomplete, "length": len(incomplete), "limit": LIMIT})]


@_silent
def job_ids(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Job ids starting with the digits typed, newest first, each with its name, state and run as help."""
    if incomplete and (not incomplete.isdigit() or incomplete.startswith("0")):
        return []
    rows: list[tuple] = []
    with _reader(ctx) as fetch:
        ((max_id,),) = fetch(MAX_JOB_ID_SQL, {})
        for low, high in _id_ranges(incomplete, max_id or 0):
            rows += fetch(JOBS_SQL, {"low": low, "high": high, "limit": LIMIT - len(rows)})
            if len(rows) >= LIMIT:
                break
    return [(str(job_id), f"{name} ({state}, run {run})") for job_id, name, state, run in rows]


def runs_or_job_ids(ctx: typer.Context, incomplete: str) -> list:
    """For arguments that take a run name or job ids (`jq cancel`, `jq retry`): ids once a digit is typed."""
    return job_ids(ctx, incomplete) if incomplete[:1].isdigit() else run_names(ctx, incomplete)


@_silent
def states(incomplete: str) -> list[str]:
    return [state.value for state in JobState if state.value.startswith(incomplete)]


def _id_ranges(prefix: str, max_id: int) -> Iterator[tuple[int, int]]:
    """The ids up to max_id whose digits start with `prefix`, as (low, high) ranges, the longest ids first."""
    if not prefix:
        yield 1, max_id
        return
    start = int(prefix)
    for extra_digits in range(len(str(max_id)) - len(prefix), -1, -1):
        scale = 10**extra_digits
        yield start * scale, min((start + 1) * scale - 1, max_id)


@contextmanager
def _reader(ctx: typer.Context) -> Iterator[Callable[[str, dict], list[tuple]]]:
    """fetch(sql, params) -> rows, on the DB of the command line being completed; never creates one."""
    from jobqueue.paths import resolve_url, sqlite_path, sqlite_readonly_connection

    db_arg = ctx.params.get("db")
    path = sqlite_path(resolve_url(db_arg))
    if path is not None:
        conn = sqlite_readonly_connection(path)  # read-only: a missing file is an error, not a new DB
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield lambda query, params: conn.execute(query, params).fetchall()
        finally:
            conn.close()
        return
    from typing import cast

    from jobqueue.db import Cursor, Transaction, open_db

    db = open_db(db_arg, create=False)
    raw = db.engine.raw_connection()
    try:
        # SQLAlchemy types its pooled cursor more loosely than the DB-API cursor psycopg hands back.
        yield Transaction(db.dialect, cast(Cursor, raw.cursor())).all
    finally:
        raw.close()
        db.dispose()
