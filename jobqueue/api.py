"""Reading a queue from Python (a notebook, an analysis script): runs, jobs, attempts, results and metric points
as plain records, read-only, a page at a time.

    import jobqueue
    with jobqueue.open_queue() as q:                 # the DB `jq` would use: $JQ_DB, else ./jobqueue.db
        best = q.results("quickstart", sort="reward").to_pandas()

Every method returns a Records collection at once and reads its rows as they are iterated, results.FETCH_ROWS
at a time (on PostgreSQL from a server-side cursor), so a run of a million jobs is in memory only when list() or
.to_pandas() puts it there. The numbers are those of `jq status` and `jq results`, read by report.py and
results.py; pandas is imported by to_pandas() alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from jobqueue import results as reading, sql
from jobqueue.errors import UserError
from jobqueue.report import STATES, Reader, open_reader
from jobqueue.states import JobState

if TYPE_CHECKING:
    import pandas

# --- records ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """A row of `runs`, with its jobs per state as `jq status` counts them."""

    id: int
    name: str
    sweep: str  # the module or file it was enqueued from
    train_dir: str
    suffix: str
    cwd: str
    settings: dict  # the sweep's launch settings, then what `jq launch` used
    created_at: datetime  # naive UTC, as every time here
    counts: dict[str, int]  # jobs per state, every state named
    total: int


@dataclass(frozen=True, slots=True)
class Job:
    """A row of `jobs`: what `jq list --json` shows of a job, and its limits and times."""

    id: int
    run: str
    name: str
    experiment: str
    state: str  # queued, running, succeeded, failed, timeout, cancelled
    params: dict
    cmd: str
    argv: list[str]
    env: dict | None
    cwd: str
    log_dir: str
    attempts: int  # claims so far
    failures: int  # failed or timed-out attempts
    max_attempts: int
    timeout: float | None
    exit_code: int | None  # of the last attempt
    signal: int | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """A row of `attempts`: one run of a job by a worker."""

    id: int
    job_id: int
    number: int
    worker_id: int | None
    host: str
    pid: int | None
    gpus: str | None
    slot: int | None
    state: str  # running, succeeded, failed, timeout, interrupted, cancelled, lost
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    signal: int | None
    log_path: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    """One metric of one job over all its attempts. NaN values are float("nan"), and count in `count` only."""

    last: float  # the value at the highest step
    last_step: int | None
    min: float
    max: float
    count: int


@dataclass(frozen=True, slots=True)
class JobResult:
    """A row of `jq results RUN`: a job, its parameters and each metric's summary."""

    id: int
    name: str
    state: str
    params: dict
    duration_s: float | None  # over all its attempts; a running one's until now
    metrics: dict[str, Summary]


@dataclass(frozen=True, slots=True)
class Stats:
    """One metric over a group's jobs' last values (NaN ones left out); std is NaN for a single job."""

    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class GroupResult:
    """A row of `jq results RUN --group-by P`: one combination of the parameters' values."""

    group: dict
    jobs: int
    metrics: dict[str, Stats]


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """A value a job logged, as `jq metrics JOB` lists it."""

    attempt: int
    key: str
    step: int | None
    value: float
    wall_time: float | None  # seconds since the epoch


R = TypeVar("R")
Rows = Generator[R, None, None]  # rows of a query: closing one closes its cursor


class Records(Generic[R]):
    """The records of one query, read a page at a time while they are iterated; each iteration reads them again.

    The first page is read when the collection is made, so a bad argument raises where it was given."""

    def __init__(self, rows: Callable[[], Rows[R]], table: Callable[[], tuple[list[str], Callable[[R], Sequence]]]):
        self._rows, self._table = rows, table
        self._first: Iterator[R] | None = _started(rows())

    def __iter__(self) -> Iterator[R]:
        rows, self._first = self._first or self._rows(), None
        return rows

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame, a row per record. Runs, jobs, attempts and points: a column per field (params, counts
        and the like stay dicts). Results: the columns of `jq results --csv`, each parameter and each metric's
        last value (grouped: each metric's KEY.mean, KEY.std, KEY.min and KEY.max), as numbers."""
        try:
            import pandas
        except ImportError:
            raise UserError("to_pandas() needs pandas: pip install 'jobqueue[pandas]'") from None
        columns, cells = self._table()
        return pandas.DataFrame.from_records((cells(r) for r in self), columns=columns)

    def __repr__(self) -> str:
        return "<jobqueue Records: iterate them, or list() or .to_pandas() them>"


def _started(rows: Rows[R]) -> Iterator[R]:
    """The rows, the first one already read."""
    first = next(rows, None)
    return iter(()) if first is None else _chain_first(first, rows)


def _chain_first(first: R, rows: Rows[R]) -> Iterator[R]:
    with contextlib.closing(rows):
        yield first
        yield from rows


def _fields_table(record: type) -> Callable[[], tuple[list[str], Callable]]:
    """A dataclass's fields as the columns, its values as the cells."""
    columns = [f.name for f in fields(record)]
    return lambda: (columns, lambda r: tuple(getattr(r, c) for c in columns))


# --- the queue ----------------------------------------------------------------------------------------

_RUNS = "SELECT id, name, sweep, train_dir, suffix, cwd, settings, created_at FROM runs ORDER BY id"
_JOB_COLUMNS = [f.name for f in fields(Job) if f.name != "run"]
_JOBS = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE run_id = :run_id{{state}} ORDER BY id"
_ATTEMPT_COLUMNS = [f.name for f in fields(Attempt)]
_ATTEMPTS = f"SELECT {', '.join(_ATTEMPT_COLUMNS)} FROM attempts WHERE job_id = :job_id ORDER BY number"


def open_queue(db: str | None = None) -> Queue:
    """The queue DB for reading: a file path or an SQLAlchemy URL (postgresql+psycopg://user@host/db), else
    $JQ_DB, else ./jobqueue.db, as for `jq`. Read-only: SQLite opened so, PostgreSQL in READ ONLY transactions.
    Close it with close(), or use it in a `with` block."""
    return Queue(open_reader(db))


class Queue:
    """Runs, jobs, attempts, results and metric points of a queue DB, as Records of plain frozen dataclasses."""

    def __init__(self, reader: Reader):
        self._reader = reader
        self._reading = 0  # queries under way: their transaction ends when the last one does
        if reader.dialect == sql.POSTGRESQL:
            reader.conn.rollback()  # what the open ran has ended: read_only applies to the transactions begun next
            reader.conn.driver_connection.read_only = True
        else:  # a DB that had to be upgraded first comes on SQLAlchemy's connection, which could write
            reader.conn.cursor().execute("PRAGMA query_only=ON")

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def runs(self) -> Records[Run]:
        """Every run, oldest first, with its jobs per state."""

        def rows(reader: Reader) -> Rows[Run]:
            counts: dict[str, dict[str, int]] = {}
            for name, state, n in reader.rows(sql.COUNTS_SQL):
                counts.setdefault(name, dict.fromkeys(STATES, 0))[state] = n
            to_dict = _converter(["id", "name", "sweep", "train_dir", "suffix", "cwd", "settings", "created_at"])
            for raw in reading.stream_rows(reader, _RUNS, {}):
                run = to_dict(raw)
                run["settings"] = run["settings"] or {}
                run_counts = counts.get(run["name"], dict.fromkeys(STATES, 0))
                yield Run(**run, counts=run_counts, total=sum(run_counts.values()))

        return self._records(rows, Run)

    def jobs(self, run: str | Run, state: str | None = None) -> Records[Job]:
        """The run's jobs (those in `state` only, if given), in sweep order."""
        if state is not None and state not in STATES:
            raise UserError(f"state {state!r}: unknown state; use one of {', '.join(s.value for s in JobState)}")
        run = _run_name(run)

        def rows(reader: Reader) -> Rows[Job]:
            params = {"run_id": reading.run_id_of(reader, run), "state": state}
            to_dict = _converter(_JOB_COLUMNS)
            query = _JOBS.format(state=" AND state = :state" if state else "")
            for raw in reading.stream_rows(reader, query, params):
                yield Job(run=run, **to_dict(raw))

        return self._records(rows, Job)

    def attempts(self, job: int | Job) -> Records[Attempt]:
        """A job's attempts, the first first."""
        job_id = _job_id(job)

        def rows(reader: Reader) -> Rows[Attempt]:
            reading.job_metric_keys(reader, job_id)  # raises the CLI's error for a job that is not there
            to_dict = _converter(_ATTEMPT_COLUMNS)
            for raw in reading.stream_rows(reader, _ATTEMPTS, {"job_id": job_id}):
                yield Attempt(**to_dict(raw))

        return self._records(rows, Attempt)

    def results(
        self,
        run: str | Run,
        sort: str | None = None,
        group_by: str | Sequence[str] | None = None,
        minimize: bool = False,
        metrics: Sequence[str] | None = None,
    ) -> Records[JobResult] | Records[GroupResult]:
        """`jq results RUN`: a JobResult per job, best first by `sort`'s last value (highest first, lowest with
        minimize, NaN and missing last), else in sweep order; `metrics` keeps only those keys. With group_by
        (a parameter or several), a GroupResult per combination of their values, its jobs' last values
        summarized; groups are made once every job is read (their memory grows with the groups)."""
        run = _run_name(run)
        group_by = [group_by] if isinstance(group_by, str) else list(group_by or ())
        metrics = list(metrics or ())

        def rows(reader: Reader) -> Rows[JobResult | GroupResult]:
            for row in reading.results(reader, run, sort=sort, minimize=minimize, group_by=group_by, metrics=metrics):
                if group_by:
                    yield GroupResult(row["group"], row["jobs"], {k: Stats(**s) for k, s in row["metrics"].items()})
                else:
                    yield JobResult(**{**row, "metrics": {k: Summary(**s) for k, s in row["metrics"].items()}})

        def table() -> tuple[list[str], Callable]:
            with self._transaction() as reader:
                shown = reading.result_columns(reader, run, metrics)
            assert shown.params is not None  # result_columns names every parameter unless asked not to
            if group_by:
                stats = [(k, s) for k in shown.metrics for s in ("mean", "std", "min", "max")]
                return [*group_by, "jobs", *(f"{k}.{s}" for k, s in stats)], lambda g: [
                    *(g.group[p] for p in group_by),
                    g.jobs,
                    *(getattr(g.metrics[k], s) if k in g.metrics else None for k, s in stats),
                ]
            return ["id", "name", "state", *shown.params, "duration_s", *shown.metrics], lambda r: [
                r.id,
                r.name,
                r.state,
                *(r.params.get(p) for p in shown.params),
                r.duration_s,
                *(r.metrics[k].last if k in r.metrics else None for k in shown.metrics),
            ]

        return Records(lambda: self._stream(rows), table)

    def metrics(self, job: int | Job, key: str | Sequence[str] | None = None) -> Records[MetricPoint]:
        """`jq metrics JOB [KEY...]`: the points a job logged, attempt by attempt, each key's in step order
        (unstepped points in the order they were logged)."""
        job_id = _job_id(job)
        keys = [key] if isinstance(key, str) else list(key or ())

        def rows(reader: Reader) -> Rows[MetricPoint]:
            for point in reading.metrics(reader, job_id, keys):
                yield MetricPoint(**point)

        return self._records(rows, MetricPoint)

    # --- reading ---

    def _records(self, rows: Callable[[Reader], Rows[R]], record: type) -> Records[R]:
        return Records(lambda: self._stream(rows), _fields_table(record))

    def _stream(self, rows: Callable[[Reader], Rows[R]]) -> Rows[R]:
        with self._transaction() as reader, contextlib.closing(rows(reader)) as found:
            yield from found

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Reader]:
        """The reader, for a query; on PostgreSQL the transaction ends with the last query under way, so that
        none stays open between calls (a notebook may sit for days)."""
        self._reading += 1
        try:
            yield self._reader
        finally:
            self._reading -= 1
            if self._reading == 0 and self._reader.dialect == sql.POSTGRESQL:
                self._reader.conn.rollback()


def _run_name(run: str | Run) -> str:
    return run.name if isinstance(run, Run) else run


def _job_id(job: int | Job) -> int:
    # int(): an id taken from a DataFrame is numpy's integer, which the drivers refuse or match to nothing.
    return job.id if isinstance(job, Job) else int(job)


def _converter(columns: list[str]) -> Callable[[tuple], dict]:
    return sql.row_converter([(c,) for c in columns])
