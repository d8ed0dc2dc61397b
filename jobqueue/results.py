"""What jobs achieved, in the DB: storing the chunks metrics.py reads, and reading them back for `jq results`,
`jq metrics` and `jq status`, as rows and as table, JSON or CSV.

Plain SQL (sql.py), the same on SQLite and PostgreSQL. A NaN is stored as NULL (see models.py) and comes back
as float("nan"); output spells the non-finite numbers NaN, Infinity and -Infinity, which JSON parsers of
Python and JavaScript (Number("Infinity")) turn back into numbers. Readers stream: a run of any size is read
with one query, a bounded number of rows at a time.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import IO, TypeVar

from jobqueue import layout, metrics as readers, sql
from jobqueue.db import Database, Transaction
from jobqueue.errors import UserError
from jobqueue.metrics import Chunk, Point, Source
from jobqueue.report import Reader, unknown_run

NAN = float("nan")
_T = TypeVar("_T")
FETCH_ROWS = 2000

# --- storing --------------------------------------------------------------------------------------

_KNOWN_SOURCES = "SELECT path, kind, attempt_id, bytes_read FROM metric_sources WHERE job_id = :job_id ORDER BY id"
# Takes the byte range [start, end) of a file for this transaction: a second reader of the same file (a worker
# declared lost that is still running, say) finds the range taken and stores nothing twice. Returns the attempt
# the file belongs to.
_TAKE_RANGE = (
    "INSERT INTO metric_sources (job_id, attempt_id, path, kind, bytes_read, points, skipped, read_at) "
    "VALUES (:job_id, :attempt_id, :path, :kind, :end, :points, :skipped, {now}) "
    "ON CONFLICT (job_id, path) DO UPDATE SET bytes_read = excluded.bytes_read, "
    "points = metric_sources.points + excluded.points, skipped = metric_sources.skipped + excluded.skipped, "
    "read_at = excluded.read_at WHERE metric_sources.bytes_read = :start RETURNING attempt_id"
)
_INSERT_POINTS = "INSERT INTO metric_points (job_id, attempt_id, key, step, value, wall_time) VALUES (?, ?, ?, ?, ?, ?)"
# One row per key of a chunk, merged with the stored one. `last` is the value at the highest step, the newer of
# equal ones: a resumed attempt logging old steps again does not move it back. An unstepped point comes before any
# stepped one (a key logged without steps has its newest value last). NULL bounds are "no number yet". A new key's
# seq is the number of keys the job had before it: the rows are inserted one after another.
_MERGE_SUMMARY = (
    "INSERT INTO metric_summaries (job_id, key, seq, last, last_step, min, max, count) "
    "VALUES (?, ?, (SELECT count(*) FROM metric_summaries WHERE job_id = ?), ?, ?, ?, ?, ?) "
    "ON CONFLICT (job_id, key) DO UPDATE SET "
    "last = CASE WHEN {keep_last} THEN metric_summaries.last ELSE excluded.last END, "
    "last_step = CASE WHEN {keep_last} THEN metric_summaries.last_step ELSE excluded.last_step END, "
    "min = CASE WHEN metric_summaries.min IS NULL OR excluded.min < metric_summaries.min THEN excluded.min "
    "ELSE metric_summaries.min END, "
    "max = CASE WHEN metric_summaries.max IS NULL OR excluded.max > metric_summaries.max THEN excluded.max "
    "ELSE metric_summaries.max END, "
    "count = metric_summaries.count + excluded.count"
).replace(
    "{keep_last}",
    "metric_summaries.last_step IS NOT NULL AND (excluded.last_step IS NULL "
    "OR excluded.last_step < metric_summaries.last_step)",
)


def known_sources(tx: Transaction, job_id: int) -> dict[str, Source]:
    """The files already read for a job, by any attempt, and how far."""
    return {
        path: Source(path, kind, attempt_id, bytes_read)
        for path, kind, attempt_id, bytes_read in tx.all(_KNOWN_SOURCES, {"job_id": job_id})
    }


_EARLIER_ATTEMPTS = (
    "SELECT id, log_path, started_at FROM attempts WHERE job_id = :job_id AND id <= :attempt_id ORDER BY id"
)


def _sources_to_read(
    tx: Transaction, job_id: int, attempt_id: int
) -> tuple[dict[str, Source], list[tuple[int, float]]]:
    """known_sources, and the JSON-lines files of the job's earlier attempts, each its own attempt's: a worker
    killed outright (SIGKILL, a lost node) left what its attempt logged since its last read, which the attempt
    that runs the job next stores. With the attempts' starts (seconds since the epoch, by the DB's clock), for
    telling whose a new event file is."""
    known = known_sources(tx, job_id)
    starts = []
    for earlier_id, log_path, started_at in tx.all(_EARLIER_ATTEMPTS, {"job_id": job_id, "attempt_id": attempt_id}):
        starts.append((earlier_id, sql.decode_time(started_at).replace(tzinfo=UTC).timestamp()))
        if not log_path or earlier_id == attempt_id:
            continue
        path = readers.metrics_file_for(log_path)
        known.setdefault(path, Source(path, readers.JSONL, earlier_id))
    return known, starts


def ingest(tx: Transaction, job_id: int, attempt_id: int, chunk: Chunk) -> bool:
    """Store a chunk read from one of the job's files: its points, the summaries, and how far the file is read.
    A file new to the job belongs to `attempt_id`; one read before keeps its attempt. False (nothing stored) when
    the chunk's range was already taken by another reader."""
    taken = tx.first(
        _TAKE_RANGE,
        {
            "job_id": job_id,
            "attempt_id": attempt_id,
            "path": chunk.path,
            "kind": chunk.kind,
            "start": chunk.start,
            "end": chunk.end,
            "points": len(chunk.points),
            "skipped": chunk.skipped,
        },
    )
    if taken is None:
        return False
    add_points(tx, job_id, taken[0], chunk.points)
    return True


def add_points(tx: Transaction, job_id: int, attempt_id: int, points: list[Point]) -> None:
    """Insert points of one attempt, in the order they were logged, and fold them into the job's summaries."""
    if not points:
        return
    tx.executemany(
        _INSERT_POINTS,
        [
            (job_id, attempt_id, key, step, None if math.isnan(value) else value, wall_time)
            for key, step, value, wall_time in points
        ],
    )
    tx.executemany(_MERGE_SUMMARY, [(job_id, key, job_id, *summary) for key, summary in _summarize(points).items()])


def _summarize(points: list[Point]) -> dict[str, list]:
    """Per key, in the order the keys first appear: [last, last_step, min, max, count], as _MERGE_SUMMARY merges them."""
    found: dict[str, list] = {}
    for key, step, value, _ in points:
        number = None if math.isnan(value) else value
        s = found.get(key)
        if s is None:
            found[key] = [number, step, number, number, 1]
            continue
        if s[1] is None or (step is not None and step >= s[1]):  # as _MERGE_SUMMARY orders them
            s[0], s[1] = number, step
        if number is not None:
            if s[2] is None or number < s[2]:
                s[2] = number
            if s[3] is None or number > s[3]:
                s[3] = number
        s[4] += 1
    return found


@dataclass
class Collected:
    """What one collect() stored."""

    points: int = 0
    skipped: int = 0
    message: str | None = None  # to show once: event files that cannot be read


def collect(
    db: Database,
    job_id: int,
    attempt_id: int,
    *,
    experiment_dir: str | None,
    metrics_file: str | None,
    chunk_points: int = readers.CHUNK_POINTS,
) -> Collected:
    """Read what is new in a job's files and store it, one transaction per chunk: the worker's call while an
    attempt runs (every --metrics-every seconds) and once more when it has ended. Files are read outside the
    transactions, and no more than one chunk is held at a time."""
    known, starts = db.transact(lambda tx: _sources_to_read(tx, job_id, attempt_id), write=False)
    sources, message = readers.job_sources(known, attempt_id, experiment_dir, metrics_file, starts)
    done = Collected(message=message)
    for source in sources:
        for chunk in readers.read_new(source, chunk_points):
            if not db.transact(functools.partial(ingest, job_id=job_id, attempt_id=source.attempt_id, chunk=chunk)):
                break  # another reader is further on in this file
            done.points += len(chunk.points)
            done.skipped += chunk.skipped
    return done


# --- reading --------------------------------------------------------------------------------------


@contextmanager
def _reading(source: Database | Reader) -> Iterator[Reader]:
    """A Reader as it is, or one on a Database's own connection (read-only on SQLite), closed afterwards."""
    if isinstance(source, Reader):
        yield source
        return
    if source.path is not None:  # SQLite
        from jobqueue.paths import sqlite_readonly_connection

        conn = sqlite_readonly_connection(source.path)
        reader = Reader(conn, conn.close, sql.SQLITE)
    else:
        raw = source.engine.raw_connection()
        reader = Reader(raw, raw.close, source.dialect)
    try:
        yield reader
    finally:
        reader.close()


_cursors = itertools.count()


def stream_rows(reader: Reader, query: str, params: dict) -> Iterator[tuple]:
    """The rows of one query, read FETCH_ROWS at a time."""
    for page in _pages(reader, query, params):
        yield from page


def _pages(reader: Reader, query: str, params: dict) -> Iterator[list[tuple]]:
    """The rows of one query, FETCH_ROWS at a time: on PostgreSQL from a server-side cursor, which psycopg
    would otherwise fetch whole into memory."""
    if reader.dialect == sql.POSTGRESQL:
        # Every row is read: the planner is to plan for all of them, not for the first tenth as it does for a
        # cursor by default (with which it chose nested loops several times slower on a big run).
        reader.conn.cursor().execute("SET LOCAL cursor_tuple_fraction = 1.0")
        cursor = reader.conn.cursor(name=f"jq_stream_{next(_cursors)}")
    else:
        cursor = reader.conn.cursor()
    try:
        cursor.execute(sql.render(query, reader.dialect), params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield rows
    finally:
        cursor.close()


def run_id_of(reader: Reader, run: str) -> int:
    """The id of the run named `run`; the CLI's error, naming the runs there are, if there is none."""
    row = reader.rows("SELECT id FROM runs WHERE name = :name", {"name": run})
    if not row:
        raise unknown_run(run, [name for (name,) in reader.rows("SELECT name FROM runs ORDER BY id")])
    return row[0][0]


_RUN_KEYS = (
    "SELECT m.key FROM metric_summaries m JOIN jobs j ON j.id = m.job_id WHERE j.run_id = :run_id "
    "GROUP BY m.key ORDER BY min(m.seq), count(*) DESC, m.key"
)


def run_metric_keys(reader: Reader, run_id: int) -> list[str]:
    """The keys the run's jobs logged, the first-logged first (the one `jq status` judges jobs by)."""
    return [key for (key,) in reader.rows(_RUN_KEYS, {"run_id": run_id})]


def run_param_names(reader: Reader, run_id: int) -> list[str]:
    """The parameters of the run's jobs, in the order of the sweep."""
    names: dict[str, None] = {}
    for (text,) in stream_rows(
        reader, "SELECT CAST(params AS TEXT) FROM jobs WHERE run_id = :run_id ORDER BY id", {"run_id": run_id}
    ):
        names.update(dict.fromkeys(json.loads(text)))
    return list(names)


@dataclass
class ResultColumns:
    """What a results table or CSV shows: the run's parameters and metric keys."""

    run_id: int
    params: list[str] | None  # None: those of the rows shown (results_table finds them)
    metrics: list[str]


def result_columns(
    source: Database | Reader, run: str, metrics: Iterable[str] = (), params: bool = True
) -> ResultColumns:
    """The columns of `jq results RUN`: every parameter (unless not params: the table finds them in its rows,
    or asks run_param_names when the run is longer than a page), and the metrics asked for (else all the
    run's)."""
    metrics = list(metrics)
    with _reading(source) as reader:
        run_id = run_id_of(reader, run)
        _check_run_keys(reader, run, run_id, "--metric", metrics)
        keys = metrics or run_metric_keys(reader, run_id)
        return ResultColumns(run_id, run_param_names(reader, run_id) if params else None, keys)


_HAS_KEY = (
    "SELECT 1 FROM metric_summaries s JOIN jobs j ON j.id = s.job_id WHERE j.run_id = :run_id AND s.key = :key LIMIT 1"
)


def _check_run_keys(reader: Reader, run: str, run_id: int, option: str, asked: list[str]) -> None:
    """_check_keys without reading every key of the run, unless one asked for is not there."""
    if not all(reader.rows(_HAS_KEY, {"run_id": run_id, "key": key}) for key in asked):
        _check_keys(option, run, asked, run_metric_keys(reader, run_id))


def _check_keys(option: str, run: str, asked: list[str], known: list[str]) -> None:
    unknown = [k for k in asked if k not in known]
    if unknown:
        raise UserError(
            f"{option} {unknown[0]}: no job of run {run!r} has logged this metric (metrics: {_listed(known)})"
        )


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "") if keys else "none yet"


_DURATION = {  # an attempt's seconds, a running one's until now
    sql.SQLITE: "(julianday(COALESCE(a.ended_at, {now})) - julianday(a.started_at)) * 86400.0",
    sql.POSTGRESQL: "CAST(EXTRACT(EPOCH FROM COALESCE(a.ended_at, {now}) - a.started_at) AS DOUBLE PRECISION)",
}
# The run's jobs with their seconds over all attempts, then their summaries a page of jobs at a time: each job's
# columns are read once, not once per metric. The jobs are read first and a job's metrics are stored before its
# end is recorded, so a run being written to never shows a finished job without its last points.
_JOBS = (
    "SELECT j.id, j.name, j.state, CAST(j.params AS TEXT), (SELECT sum({duration}) FROM attempts a WHERE a.job_id = j.id)"
    "{lasts} FROM jobs j {sort_join}WHERE j.run_id = :run_id ORDER BY {sort_order}j.id"
)
# In job_pages(), each metric's last value is a column of its job's row: NULL where the job has not logged the
# key, and a NaN stored as NULL comes back as 'NaN' (text on SQLite, which holds no NaN; a NaN on PostgreSQL).
_LAST = ", (SELECT COALESCE(last, {nan}) FROM {summaries} WHERE job_id = j.id AND key = :{key})"
_NAN = {sql.SQLITE: "'NaN'", sql.POSTGRESQL: "CAST('NaN' AS DOUBLE PRECISION)"}
# SQLite's planner picks the primary key's index, which has no `last`, over migration 0003's, which has it: each
# lookup would also read the table's row.
_SUMMARIES_TABLE = {
    sql.SQLITE: "metric_summaries INDEXED BY ix_metric_summaries_lasts",
    sql.POSTGRESQL: "metric_summaries",
}
# In key order (the primary key's), which is cheaper than sorting by seq here; _summaries orders each job's keys.
_SUMMARIES = (
    "SELECT job_id, seq, key, last, last_step, min, max, count FROM metric_summaries WHERE job_id IN ({job_list})"
    "{key_filter} ORDER BY job_id"
)
_SORT_JOIN = "LEFT JOIN metric_summaries s ON s.job_id = j.id AND s.key = :sort "
# A NaN (NULL) or missing value sorts last, whichever the direction.
_SORT_ORDER = "CASE WHEN s.last IS NULL THEN 1 ELSE 0 END, s.last {direction}, "


def results(
    source: Database | Reader,
    run: str,
    sort: str | None = None,
    minimize: bool = False,
    group_by: Iterable[str] = (),
    metrics: Iterable[str] = (),
) -> Iterator[dict]:
    """`jq results RUN`: one row per job, best first by `sort`'s last value (highest first; lowest with
    minimize; NaN and missing last), else in sweep order:
        {"id", "name", "state", "params": {...}, "duration_s", "metrics": {KEY: {"last", "last_step", "min", "max", "count"}}}
    The table and the CSV read job_pages() instead: each metric's last value alone, without a dict per job.
    With group_by, one row per combination of those parameters' values, over the jobs' last values, in the order
    the combinations first appear (best first with `sort`):
        {"group": {...}, "jobs": N, "metrics": {KEY: {"mean", "std", "min", "max"}}}
    The database sorts and aggregates: job rows stream, and groups take memory per group, never per job."""
    metrics, group_by = list(metrics), list(group_by)
    with _reading(source) as reader:
        run_id = _checked_run(reader, run, sort, metrics)
        if not group_by:
            yield from _job_rows(reader, run_id, sort, minimize, metrics)
            return
        groups = _groups(reader, run, run_id, group_by, metrics)
    if sort:
        groups.sort(key=lambda g: _order_key(g["metrics"].get(sort, {}).get("mean", NAN), minimize))
    yield from groups


def job_pages(
    source: Database | Reader, run: str, metrics: Sequence[str], sort: str | None = None, minimize: bool = False
) -> Iterator[list[tuple]]:
    """results() as the table and the CSV read it, a page of rows at a time, each row as the database gives it:
        (id, name, state, params as JSON text, seconds over all attempts, the last value of each of `metrics`)
    where a last value is None if the job has not logged the key, and a NaN may come as the text 'NaN'
    (last_number() reads it). No dict per job: on a 10,000-job run they cost as much as the query."""
    with _reading(source) as reader:
        yield from _lasts_pages(reader, _checked_run(reader, run, sort, list(metrics)), sort, minimize, list(metrics))


def last_number(value: float | str | None) -> float | None:
    """A last value of job_pages() as a number (SQLite, which holds no NaN, gives the text 'NaN')."""
    return value if value is None or value.__class__ is float else float(value)


def _checked_run(reader: Reader, run: str, sort: str | None, metrics: list[str]) -> int:
    run_id = run_id_of(reader, run)
    _check_run_keys(reader, run, run_id, "--metric", metrics)
    _check_run_keys(reader, run, run_id, "--sort", [sort] if sort else [])
    return run_id


def _jobs_query(reader: Reader, sort: str | None, minimize: bool, lasts: str = "") -> str:
    return _JOBS.format(
        duration=_DURATION[reader.dialect],
        lasts=lasts,
        sort_join=_SORT_JOIN if sort else "",
        sort_order=_SORT_ORDER.format(direction="ASC" if minimize else "DESC") if sort else "",
    )


def _lasts_pages(
    reader: Reader, run_id: int, sort: str | None, minimize: bool, metrics: list[str]
) -> Iterator[list[tuple]]:
    _, key_params = sql.expand("key", metrics)
    lasts = "".join(
        _LAST.format(nan=_NAN[reader.dialect], summaries=_SUMMARIES_TABLE[reader.dialect], key=key)
        for key in key_params
    )
    yield from _pages(
        reader, _jobs_query(reader, sort, minimize, lasts), {"run_id": run_id, "sort": sort, **key_params}
    )


def _job_rows(reader: Reader, run_id: int, sort: str | None, minimize: bool, metrics: list[str]) -> Iterator[dict]:
    for page in _pages(reader, _jobs_query(reader, sort, minimize), {"run_id": run_id, "sort": sort}):
        summaries = _summaries(reader, [row[0] for row in page], metrics)
        for job_id, name, state, params_text, seconds in page:
            yield {
                "id": job_id,
                "name": name,
                "state": state,
                "params": _decode_params(params_text),
                "duration_s": seconds,
                "metrics": summaries.get(job_id, {}),
            }


def _decode_params(text: str) -> dict:
    """json.loads() of a stored params object, without its checks for surrounding blanks, which cost as much."""
    return _JSON.raw_decode(text)[0]


_JSON = json.JSONDecoder()


def _summaries(reader: Reader, job_ids: list[int], metrics: list[str]) -> dict[int, dict]:
    """The jobs' summaries, by job and key, each job's keys in the order it logged them. NULL is NaN: a summary
    row always has a value behind it."""
    key_list, key_params = sql.expand("key", metrics)
    key_filter = f" AND key IN ({key_list})" if metrics else ""
    found: dict[int, list] = {}
    for job_list, params in sql.in_lists("job", job_ids):
        rows = reader.rows(_SUMMARIES.format(job_list=job_list, key_filter=key_filter), {**params, **key_params})
        for job_id, seq, key, last, last_step, low, high, count in rows:
            summary = {
                "last": NAN if last is None else last,
                "last_step": last_step,
                "min": NAN if low is None else low,
                "max": NAN if high is None else high,
                "count": count,
            }
            found.setdefault(job_id, []).append((seq, key, summary))
    return {job_id: {key: summary for _, key, summary in sorted(keys)} for job_id, keys in found.items()}


def _number(value: float | None) -> float:
    """A stored value: NULL is a NaN (a summary row always has a value behind it)."""
    return NAN if value is None else value


def _order_key(value: float, minimize: bool) -> tuple:
    return (1, 0.0) if math.isnan(value) else (0, value if minimize else -value)


# A job's value of a parameter as JSON text (SQLite's `->` and PostgreSQL's jsonb both give it), NULL where it
# has none. :group_N is the parameter (on SQLite a JSON path: `->` reads a bare 'a.b' as a path).
_PARAM_VALUE = {
    sql.SQLITE: "j.params -> :group_{i}",
    sql.POSTGRESQL: "CAST(CAST(j.params AS jsonb) -> :group_{i} AS TEXT)",
}
# Each job's group values and last value of each metric, made once (MATERIALIZED: else the planner repeats each
# metric's lookup in every aggregate over it), then one aggregate per combination of values: its jobs, how many
# of them have each parameter, and per metric the count, sum and sum of squares of its finite values, each less
# :shift_N (a value of the metric from the run, so that the squares cancel no more digits than the spread between
# groups takes), the lowest and highest, and whether +inf or -inf is among them. NaN (NULL) is left out of each.
_GROUP_STATS = (
    "WITH per_job AS MATERIALIZED (SELECT j.id, {values}{lasts} FROM jobs j WHERE j.run_id = :run_id) "
    "SELECT {groups}, count(*), {present}{stats} FROM per_job GROUP BY {positions} ORDER BY min(id)"
)
_LAST_OF = ", (SELECT last FROM metric_summaries WHERE job_id = j.id AND key = :key_{k}) AS l{k}"
_SHIFTED = "CASE WHEN l{k} > :ninf AND l{k} < :inf THEN l{k} - :shift_{k} END"
_STATS_OF = (
    ", count({y}), sum({y}), sum(({y}) * ({y})), min(l{k}), max(l{k}), "
    "max(CASE WHEN l{k} = :inf THEN 1 ELSE 0 END), max(CASE WHEN l{k} = :ninf THEN 1 ELSE 0 END)"
)
_A_FINITE_VALUE = (
    "SELECT s.last FROM jobs j JOIN metric_summaries s ON s.job_id = j.id WHERE j.run_id = :run_id "
    "AND s.key = :key AND s.last > :ninf AND s.last < :inf LIMIT 1"
)


def _groups(reader: Reader, run: str, run_id: int, group_by: list[str], metrics: list[str]) -> list[dict]:
    """The jobs' last values per combination of the group_by parameters, in the order the combinations first
    appear. NaN values are left out of a group's numbers (its `jobs` still counts their jobs); a metric none of
    its jobs has a number for is left out of the group. A job without a parameter is in the group of null."""
    keys = metrics or run_metric_keys(reader, run_id)
    params: dict = {"run_id": run_id, "inf": math.inf, "ninf": -math.inf}
    for i, name in enumerate(group_by):
        params[f"group_{i}"] = name if reader.dialect == sql.POSTGRESQL else '$."' + name + '"'
    for k, key in enumerate(keys):
        shift = reader.rows(_A_FINITE_VALUE, {**params, "key": key})
        params[f"key_{k}"], params[f"shift_{k}"] = key, shift[0][0] if shift else 0.0
    value = _PARAM_VALUE[reader.dialect]
    query = _GROUP_STATS.format(
        values=", ".join(f"{value.format(i=i)} AS p{i}" for i in range(len(group_by))),
        lasts="".join(_LAST_OF.format(k=k) for k in range(len(keys))),
        groups=", ".join(f"COALESCE(p{i}, 'null')" for i in range(len(group_by))),
        present=", ".join(f"count(p{i})" for i in range(len(group_by))),
        stats="".join(_STATS_OF.format(k=k, y=_SHIFTED.format(k=k)) for k in range(len(keys))),
        positions=", ".join(str(i + 1) for i in range(len(group_by))),
    )
    found = reader.rows(query, params)
    width = len(group_by)
    for i, name in enumerate(group_by):
        if not any(row[width + 1 + i] for row in found):
            listed = ", ".join(sorted(run_param_names(reader, run_id))) or "none"
            raise UserError(f"--group-by {name}: no job of run {run!r} has this parameter (parameters: {listed})")
    groups = []
    for row in found:
        stats = row[2 * width + 1 :]
        group_metrics = {}
        for k, key in enumerate(keys):
            n, total, squares, low, high, positive, negative = stats[7 * k : 7 * k + 7]
            if positive or negative:
                mean, std = (math.inf if positive else -math.inf) if positive != negative else NAN, NAN
            elif n:
                mean = params[f"shift_{k}"] + total / n
                std = math.sqrt(max(squares - total * total / n, 0.0) / (n - 1)) if n > 1 else NAN
            else:
                continue  # no number for this metric in the group
            group_metrics[key] = {"mean": mean, "std": std, "min": low, "max": high}
        groups.append(
            {
                "group": {name: json.loads(text) for name, text in zip(group_by, row)},
                "jobs": row[width],
                "metrics": group_metrics,
            }
        )
    return groups


_POINTS = (
    "SELECT a.number, p.key, p.step, p.value, p.wall_time FROM metric_points p JOIN attempts a ON a.id = p.attempt_id "
    "WHERE p.job_id = :job_id{key_filter} "
    "ORDER BY p.attempt_id, p.key, CASE WHEN p.step IS NULL THEN 1 ELSE 0 END, p.step, p.id"
)


def metrics(source: Database | Reader, job_id: int, keys: Iterable[str] = ()) -> Iterator[dict]:
    """`jq metrics JOB [KEY ...]`: the job's points, attempt by attempt, each key's in step order (unstepped
    points in the order they were logged): {"attempt", "key", "step", "value", "wall_time"}."""
    keys = list(keys)
    with _reading(source) as reader:
        known = _job_keys(reader, job_id)
        _check_job_keys(job_id, keys, known)
        key_list, params = sql.expand("key", keys)
        query = _POINTS.format(key_filter=f" AND p.key IN ({key_list})" if keys else "")
        for attempt, key, step, value, wall_time in stream_rows(reader, query, {**params, "job_id": job_id}):
            yield {"attempt": attempt, "key": key, "step": step, "value": _number(value), "wall_time": wall_time}


def _job_keys(reader: Reader, job_id: int) -> list[str]:
    if not reader.rows("SELECT id FROM jobs WHERE id = :job_id", {"job_id": job_id}):
        raise UserError(f"no job with id {job_id}; `jq list` shows the ids")
    return [
        key
        for (key,) in reader.rows(
            "SELECT key FROM metric_summaries WHERE job_id = :job_id ORDER BY seq", {"job_id": job_id}
        )
    ]


def _check_job_keys(job_id: int, asked: list[str], known: list[str]) -> None:
    unknown = [k for k in asked if k not in known]
    if unknown:
        raise UserError(f"{unknown[0]}: job {job_id} has not logged this metric (metrics: {_listed(known)})")


def job_metric_keys(source: Database | Reader, job_id: int) -> list[str]:
    """The keys a job logged, its first-logged first."""
    with _reading(source) as reader:
        return _job_keys(reader, job_id)


_SOURCES = (
    "SELECT a.number, s.path, s.kind, s.points, s.skipped, s.bytes_read, s.read_at FROM metric_sources s "
    "JOIN attempts a ON a.id = s.attempt_id WHERE s.job_id = :job_id ORDER BY a.number, s.id"
)


def metric_sources(source: Database | Reader, job_id: int) -> list[dict]:
    """The files a job's points came from: per attempt, its points and the bad lines or records skipped."""
    to_dict = sql.row_converter(
        [(name,) for name in ("attempt", "path", "kind", "points", "skipped", "bytes_read", "read_at")]
    )
    with _reading(source) as reader:
        return [to_dict(row) for row in reader.rows(_SOURCES, {"job_id": job_id})]


_BEST = (
    "SELECT j.id, j.name, s.last, s.last_step FROM metric_summaries s JOIN jobs j ON j.id = s.job_id "
    "WHERE j.run_id = :run_id AND s.key = :key AND s.last IS NOT NULL ORDER BY s.last {direction}, j.id LIMIT 1"
)
# The runs with metrics: their points, bad lines or records, and first file with points. One pass over
# metric_sources (a row per file read), which CROSS JOIN makes SQLite's outer loop: a DB without metrics costs
# nothing however many jobs it holds, where the other order would look up every job of every run.
_RUNS_WITH_METRICS = (
    "SELECT j.run_id, sum(s.points), sum(s.skipped), min(CASE WHEN s.points > 0 THEN s.id END) "
    "FROM metric_sources s CROSS JOIN jobs j WHERE j.id = s.job_id GROUP BY j.run_id"
)
_FIRST_KEY = (
    "SELECT m.key FROM metric_sources s JOIN metric_summaries m ON m.job_id = s.job_id "
    "WHERE s.id = :source_id ORDER BY m.seq LIMIT 1"
)


def run_best(
    source: Database | Reader, run: str, key: str | None = None, minimize: bool = False, strict: bool = True
) -> dict | None:
    """For `jq status`: the best job so far on `key` (else the first metric of the run's first job to log one),
    and the bad lines or records skipped over the run; None when the run has no metrics yet, or (unless strict)
    none named `key`.
        {"key", "minimize", "job": {"id", "name", "last", "last_step"} or None, "skipped"}"""
    return runs_best(source, [run], key, minimize, strict)[run]


def runs_best(
    source: Database | Reader, runs: Iterable[str], key: str | None = None, minimize: bool = False, strict: bool = True
) -> dict[str, dict | None]:
    """run_best of each run, by name, for `jq status`: what it costs is in the runs with metrics."""
    with _reading(source) as reader:
        run_ids = {run: run_id_of(reader, run) for run in runs}
        with_metrics = {run_id: rest for run_id, *rest in reader.rows(_RUNS_WITH_METRICS)}
        return {
            run: _best(reader, run, run_id, with_metrics.get(run_id), key, minimize, strict)
            for run, run_id in run_ids.items()
        }


def _best(
    reader: Reader, run: str, run_id: int, sources: list | None, key: str | None, minimize: bool, strict: bool
) -> dict | None:
    points, skipped, first_source = sources or (0, 0, None)
    if not points:
        return {"key": None, "minimize": minimize, "job": None, "skipped": skipped} if skipped else None
    if key is None:
        (key,) = reader.rows(_FIRST_KEY, {"source_id": first_source})[0]
    elif not reader.rows(_HAS_KEY, {"run_id": run_id, "key": key}):
        if not strict:
            return None
        _check_keys("--sort", run, [key], run_metric_keys(reader, run_id))
    found = reader.rows(_BEST.format(direction="ASC" if minimize else "DESC"), {"run_id": run_id, "key": key})
    job = dict(zip(("id", "name", "last", "last_step"), found[0])) if found else None
    return {"key": key, "minimize": minimize, "job": job, "skipped": skipped}


# --- output ---------------------------------------------------------------------------------------


def best_line(run: str, best: dict | None) -> str | None:
    """`jq status`'s line on a run's metrics (from run_best), or None when it has none."""
    if best is None:
        return None
    skipped = _skipped(best["skipped"], "bad metric line or record", "bad metric lines or records")
    if best["job"] is None:
        line = (
            f"{run}: no metric values yet"
            if best["key"] is None
            else f"{run}: no job has a number for {best['key']} yet"
        )
        return line + (f"; {skipped}" if skipped else "")
    job = best["job"]
    at = "" if job["last_step"] is None else f" at step {job['last_step']}"
    lowest = " (lowest)" if best["minimize"] else ""
    line = (
        f"{run}: best on {best['key']}{lowest} so far: job {job['id']} {job['name']}, {number_text(job['last'], 6)}{at}"
    )
    return line + (f"; {skipped}" if skipped else "")


def _skipped(n: int, one: str, many: str) -> str:
    return "" if not n else f"{n} {one if n == 1 else many} skipped"


def source_lines(sources: list[dict]) -> list[str]:
    """`jq metrics`'s account of where a job's points came from, a line per file (from metric_sources)."""
    lines = []
    for s in sources:
        what = ("bad line", "bad lines") if s["kind"] == readers.JSONL else ("bad record", "bad records")
        bad = _skipped(s["skipped"], *what)
        lines.append(f"attempt {s['attempt']}: {s['points']} points from {s['path']}" + (f", {bad}" if bad else ""))
    return lines


def number_text(value, digits: int | None = None) -> str:
    """A number as jq prints it: NaN, Infinity and -Infinity spelled out, floats to `digits` significant digits
    (all of them when None), empty for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = format(value, f".{digits}g") if digits else repr(value)
        return _SPELLED.get(text, text)
    return str(value)


_SPELLED = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as Python formats them


def jsonable(value):
    """`value` for strict JSON: non-finite floats as the strings NaN, Infinity, -Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return number_text(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def _started(rows: Iterable[_T]) -> Iterator[_T]:
    """The rows, the first one already read: a bad option (found by the first read) is reported before any output."""
    rows = iter(rows)
    first = next(rows, None)
    return rows if first is None else itertools.chain([first], rows)


def write_json(rows: Iterable[dict], out: IO[str]) -> None:
    """A JSON list, one row per line, written as the rows come."""
    rows = _started(rows)
    out.write("[")
    for i, row in enumerate(rows):
        text = json.dumps(row)
        if "NaN" in text or "Infinity" in text:  # json's own spelling of a non-finite float, or a string holding it
            text = json.dumps(jsonable(row), allow_nan=False)
        out.write(("," if i else "") + "\n" + text)
    out.write("\n]\n")


def _cell(value) -> str:
    """A CSV cell: plain text (params that are lists or dicts as JSON), numbers in full."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value)
    return number_text(value)


def write_groups_csv(groups: Iterable[dict], out: IO[str], columns: ResultColumns, group_by: Sequence[str]) -> None:
    """`jq results --csv --group-by`: per group, each metric's KEY.mean, .std, .min, .max."""
    groups, writer = _started(groups), csv.writer(out)
    writer.writerow([*group_by, "jobs", *(f"{k}.{s}" for k in columns.metrics for s in ("mean", "std", "min", "max"))])
    for g in groups:
        stats = [g["metrics"].get(k, {}).get(s) for k in columns.metrics for s in ("mean", "std", "min", "max")]
        writer.writerow([*(_cell(g["group"][p]) for p in group_by), g["jobs"], *map(_cell, stats)])


def write_jobs_csv(pages: Iterable[list[tuple]], out: IO[str], columns: ResultColumns) -> None:
    """`jq results --csv`: per job of job_pages(), the last value of each metric, numbers in full."""
    assert columns.params is not None, "a CSV names every parameter of the run (result_columns with params=True)"
    pages, writer = _started(pages), csv.writer(out)
    writer.writerow(["id", "name", "state", *columns.params, "duration_s", *columns.metrics])
    for page in pages:
        values = [_decode_params(row[3]) for row in page]
        writer.writerows(zip(*_job_cells(page, values, columns.params, digits=None)))


def write_groups_table(groups: Iterable[dict], out: IO[str], columns: ResultColumns, group_by: Sequence[str]) -> None:
    """`jq results --group-by` as plain aligned columns, each metric as mean ± std (6 and 3 significant digits)."""
    header = [*group_by, "jobs", *columns.metrics]
    table = layout.AlignedTable(out, header, right=frozenset(range(len(group_by), len(header))))
    for page in layout.pages(groups, layout.ALIGN_ROWS):
        table.write(
            [
                [
                    *(_cell(g["group"][p]) for p in group_by),
                    str(g["jobs"]),
                    *(_mean_std(g["metrics"].get(k)) for k in columns.metrics),
                ]
                for g in page
            ]
        )
    table.close()


def write_jobs_table(
    pages: Iterable[list[tuple]],
    out: IO[str],
    columns: ResultColumns,
    run_params: Callable[[], list[str]] | None = None,
) -> None:
    """`jq results` (job_pages()) as plain aligned columns, numbers to 6 significant digits. Written a page of
    layout.ALIGN_ROWS rows at a time, as `jq list` is: the best jobs show at once however big the run, a run of
    one page is laid out as a whole, and on a longer one a column only ever widens. The parameter columns are
    columns.params, else those of the rows when they fit in one page, else run_params()'s (every job's, read
    again)."""
    rows = itertools.chain.from_iterable(pages)  # the first page is read before anything is written
    first = list(itertools.islice(rows, layout.ALIGN_ROWS))
    following = next(rows, None)
    first_params = [_decode_params(row[3]) for row in first]
    params = columns.params
    if params is None:
        if following is None or run_params is None:
            params = list({name: None for values in first_params for name in values})
        else:
            params = run_params()
    header = ["id", "name", "state", *params, "duration_s", *columns.metrics]
    first_metric = 4 + len(params)
    table = layout.AlignedTable(out, header, right=frozenset({0, first_metric - 1, *range(first_metric, len(header))}))
    if first:
        table.write_columns(_job_cells(first, first_params, params, digits=6))
    if following is not None:
        for page in layout.pages(itertools.chain([following], rows), layout.ALIGN_ROWS):
            table.write_columns(_job_cells(page, [_decode_params(row[3]) for row in page], params, digits=6))
    table.close()


_PLAIN = frozenset({int, float, str, bool, type(None)})  # parameter values whose cells can be remembered


def _job_cells(page: list[tuple], values: list[dict], params: list[str], digits: int | None) -> list[Sequence[str]]:
    """The columns of cells of a page of job_pages() rows (their params decoded: `values`): numbers to `digits`
    significant digits and durations to 0.1 s for the table, in full for the CSV (digits None). Made a column at
    a time: a page's ids, durations or rewards are each one list comprehension of a C-level formatter, which
    costs far less than a Python call per cell. A sweep repeats its parameters' values, so each one's cell is
    made once a page (by type too: 1, 1.0 and True are equal keys, and different cells)."""
    number, duration = ("{:." + str(digits) + "g}", "{:.1f}") if digits else ("{!r}", "{!r}")
    ids, names, states, _, seconds, *lasts = zip(*page)
    columns: list[Sequence[str]] = [list(map(str, ids)), names, states]
    texts: dict[tuple, str] = {}
    for p in params:
        column = []
        for value in (v.get(p) for v in values):
            if value.__class__ not in _PLAIN:
                column.append(_cell(value))
                continue
            text = texts.get(memo := (value.__class__, value))
            if text is None:
                text = texts[memo] = _cell(value)
            column.append(text)
        columns.append(column)
    columns.append(["" if s is None else duration.format(s) for s in seconds])
    for values_of_key in lasts:  # number_text(last, digits), a column at once
        cells = [number.format(v) if v.__class__ is float else _odd_last_text(v, digits) for v in values_of_key]
        if "nan" in cells or "inf" in cells or "-inf" in cells:
            cells = [_SPELLED.get(t, t) for t in cells]
        columns.append(cells)
    return columns


def _odd_last_text(value, digits: int | None) -> str:
    """The cell of a last value that is not a float: none logged, or SQLite's 'NaN'."""
    return "" if value is None else number_text(last_number(value), digits)


def _mean_std(stats: dict | None) -> str:
    if stats is None:
        return ""
    if math.isnan(stats["std"]):  # one job, or an infinity: no spread to show
        return number_text(stats["mean"], 6)
    return f"{number_text(stats['mean'], 6)} ± {number_text(stats['std'], 3)}"


def write_points_csv(rows: Iterable[dict], out: IO[str]) -> None:
    rows, writer = _started(rows), csv.writer(out)
    writer.writerow(["attempt", "key", "step", "value", "wall_time"])
    for p in rows:
        writer.writerow([p["attempt"], p["key"], _cell(p["step"]), _cell(p["value"]), _cell(p["wall_time"])])


def points_table(rows: Iterable[dict], keys: list[str]) -> Iterator[str]:
    """`jq metrics JOB` as lines of aligned columns, written as they come: the widths are known beforehand."""
    key_width = max([len("key"), *map(len, keys)])
    rows = _started(rows)
    yield f"{'attempt':>7}  {'key':<{key_width}}  {'step':>12}  value"
    for p in rows:
        yield f"{p['attempt']:>7}  {p['key']:<{key_width}}  {number_text(p['step']):>12}  {number_text(p['value'], 6)}"
