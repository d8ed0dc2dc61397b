"""Plain SQL that runs on both drivers: sqlite3 and psycopg, without SQLAlchemy.

Queries are written once with `:name` parameters (`?` in many-row inserts, whose rows are tuples), `{now}`
for the database's clock and `{ago}` for it less `:lease_seconds`; `render()` turns them into each
driver's dialect. Rows come back as SQLAlchemy would give them: JSON columns decoded,
time columns (named `*_at`, a rule a test checks against models.py) as naive UTC datetimes.

It also holds the few queries that both queue.py and `jq status` run: report.py reads the DB without
importing queue, whose import `jq status` does not need.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime

from jobqueue.errors import UserError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# The database's clock, naive UTC. Heartbeats and leases use it rather than each host's clock, so skew between
# hosts cannot make a live worker look dead. On SQLite: six fraction digits, the format SQLAlchemy writes, so
# stored times compare as text.
NOW = {
    SQLITE: "strftime('%Y-%m-%d %H:%M:%f000', 'now'{})",
    POSTGRESQL: "(clock_timestamp() at time zone 'utc'{})",
}
_AGO = {  # the clock minus {seconds}
    SQLITE: ", '-' || ({seconds}) || ' seconds'",
    POSTGRESQL: " - ({seconds}) * interval '1 second'",
}


def ago(seconds: str, dialect: str) -> str:
    """The DB's clock minus `seconds`, an SQL expression: a parameter, or one that reads a row."""
    return NOW[dialect].format(_AGO[dialect].format(seconds=seconds))


# A worker's default --heartbeat: what a worker registered before its own was recorded (migration 0004) is taken to use.
HEARTBEAT_SECONDS = 5.0
# A worker is silent after two of its missed heartbeats, not one: a heartbeat is a transaction that may wait on a busy
# DB.
MISSED_BEATS = 2
_AGO_BEATS = {
    dialect: ago(f"{MISSED_BEATS} * COALESCE(w.heartbeat_seconds, {HEARTBEAT_SECONDS})", dialect)
    for dialect in (SQLITE, POSTGRESQL)
}

JSON_COLUMNS = frozenset({"settings", "params", "argv", "env", "command"})
_PARAM = re.compile(r"(?<![:\w]):(\w+)")
# Well under SQLite's 32,766 parameters in one statement, and short: SQLite finds a named parameter by a linear
# search, so binding n of them costs n^2: 32 us an id in lists of 5,000, 7 us in lists of 500 (`jq cancel` of a
# 40,000-job run: 1.8 s against 0.6 s).
IN_LIST_CHUNK = 500


@functools.lru_cache(maxsize=1024)
def render(query: str, dialect: str) -> str:
    """`query` for one driver: `:name` -> `%(name)s` and `?` -> `%s` on psycopg; {now} -> the DB's clock, {ago} -> the
    clock minus :lease_seconds, and {ago_beats} -> the clock minus MISSED_BEATS heartbeat intervals of the workers
    `w` (their own, or the default)."""
    query = query.format(now=NOW[dialect].format(""), ago=ago(":lease_seconds", dialect), ago_beats=_AGO_BEATS[dialect])
    if dialect == POSTGRESQL:
        query = _PARAM.sub(r"%(\1)s", query).replace("?", "%s")
    return query


def expand(name: str, values) -> tuple[str, dict]:
    """An IN list: (':name_0, :name_1, ...', {'name_0': v0, ...}); drivers take no list for one parameter."""
    params = {f"{name}_{i}": v for i, v in enumerate(values)}
    return ", ".join(f":{p}" for p in params) or "NULL", params


def chunks(values: list, size: int = IN_LIST_CHUNK):
    """`values` in slices short enough for one IN list (or one executemany) each."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def in_lists(name: str, values: list):
    """expand() for each chunk of `values`: a long list takes one statement per chunk."""
    for chunk in chunks(values):
        yield expand(name, chunk)


def to_json(value) -> str | None:
    """A value for a JSON column: both drivers take its text (psycopg sends text untyped, so it becomes json)."""
    return None if value is None else json.dumps(value)


def row_converter(description):
    """A function from a raw row to a dict, decoding JSON and time columns (SQLite hands both over as text), and
    giving a job's argv from its cmd where it is stored as JSON null."""
    names = [column[0] for column in description]
    convert = [from_json if n in JSON_COLUMNS else decode_time if n.endswith("_at") else None for n in names]
    argv_from_cmd = "argv" in names and "cmd" in names

    def to_dict(raw) -> dict:
        row = {n: (c(v) if c and v is not None else v) for n, c, v in zip(names, convert, raw)}
        if argv_from_cmd and row["cmd"] is not None:
            row["argv"] = argv_of(row["argv"], row["cmd"])
        return row

    return to_dict


# A job's argv is stored as JSON null when its cmd is its words joined by single spaces and holds no quote,
# backslash or control character: so it is for nearly every job, and storing both took a third of a job's row.
# Then the cmd split at its spaces gives the argv back, and a shell splits it the same. (JSON null, not SQL NULL:
# the column stays NOT NULL, and a DB made before keeps working without a migration rebuilding its jobs table.)
_SHELL_READS_OTHERWISE = re.compile(r"[\x00-\x1f'\"\\]")
ARGV_FROM_CMD = "null"


def argv_is_cmd(argv: list[str], cmd: str) -> bool:
    try:
        return cmd == " ".join(argv) and cmd.count(" ") == len(argv) - 1 and _SHELL_READS_OTHERWISE.search(cmd) is None
    except TypeError:  # a word that is not a string
        return False


def argv_of(stored, cmd: str) -> list[str]:
    """A job's argv from its two columns (its argv column as the driver gives it: text on SQLite)."""
    argv = from_json(stored)
    return cmd.split(" ") if argv is None else argv


def from_json(value):
    """A JSON column's value: SQLite gives its text, psycopg the decoded value."""
    return json.loads(value) if isinstance(value, str) else value


def decode_time(value):
    return datetime.fromisoformat(value) if isinstance(value, str) else value


# --- queries that queue.py and `jq status` (report.py, which does not import queue) both run -----------

# Counting per run_id first keeps it an index-only scan of ix_jobs_run_state_id.
_COUNTS = (
    "SELECT r.name, c.state, c.n FROM runs r JOIN "
    "(SELECT run_id, state, count(*) AS n FROM jobs {where} GROUP BY run_id, state) c ON c.run_id = r.id ORDER BY r.id, c.state"
)
COUNTS_SQL = _COUNTS.format(where="")
# One run's counts scan only its part of the index (the progress view asks twice a second).
COUNTS_FOR_RUN_SQL = _COUNTS.format(where="WHERE run_id = (SELECT id FROM runs WHERE name = :run)")


def unknown_run(name: str, known: list[str]) -> UserError:
    listed = ", ".join(known[-5:]) if known else "none yet; run `jq enqueue SWEEP`"
    return UserError(f"no run named {name!r} in this DB (runs: {listed}); check the name or --db")
