"""Queue operations: each move of a job is one function and one transaction, named after what it does.

enqueue -> claim_next_job -> record_pid -> finish_attempt; requeue_jobs_of_dead_worker, cancel_jobs and
retry_jobs move jobs back or out. The allowed moves are listed once, in states.py: every UPDATE of a job's or an
attempt's state says which states it moves from (states.job_state_is), so it cannot overwrite a state it did
not expect -- on PostgreSQL, say, a job that succeeded while `jq cancel` was looking at it.

Each is plain SQL on the driver's connection, the same text for SQLite and PostgreSQL (see sql.py): a
launch or a worker never imports SQLAlchemy, which on SQLite costs more than all the statements of a
quick sweep. The tables are defined in models.py and made by the migrations; tests hold the two to
each other and run every function here on both databases.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from jobqueue import sql
from jobqueue.db import Database, Transaction
from jobqueue.errors import UserError
from jobqueue.processes import crash_point
from jobqueue.states import (
    JOB_MOVES,
    UNFINISHED,
    AttemptState,
    JobState,
    Operation,
    attempt_state_is,
    from_states,
    job_state_is,
    literal,
    state_in,
)
from jobqueue.sweep import JobSpec

DEFAULT_LEASE_SECONDS = 60.0
ENQUEUE_CHUNK = 10_000


def run_key(run_name: str, suffix: str) -> str:
    """The run's name in the DB: the sweep's run_name, with the experiment suffix when one is given."""
    return f"{run_name}_{suffix}" if suffix else run_name


# --- enqueue -----------------------------------------------------------------------------------


@dataclass
class EnqueueResult:
    run_id: int
    run_name: str
    added: int
    existing: int
    changed: int = 0  # jobs already there under the same name whose command is now another one
    first_changed: str | None = None  # the first of them, for the message


_ADD_RUN = (
    "INSERT INTO runs (name, sweep, train_dir, suffix, cwd, settings, created_at) "
    "VALUES (:name, :sweep, :train_dir, :suffix, :cwd, :settings, :now) RETURNING id"
)
_JOB_COLUMNS = (
    "run_id",
    "idx",
    "name",
    "experiment",
    "params",
    "argv",
    "cmd",
    "env",
    "cwd",
    "root_dir",
    "log_dir",
    "state",
    "attempts",
    "failures",
    "max_attempts",
    "timeout",
    "created_at",
    "updated_at",
)
# Rows go to the driver as tuples: per-row dicts (or SQLAlchemy's parameter processing) cost several times the insert.
_INSERT_JOBS = f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' * len(_JOB_COLUMNS))})"
# Which of a chunk's names the run has, by the unique (run_id, name) index.
_KNOWN_NAMES = "SELECT name, CAST(argv AS TEXT), cmd FROM jobs WHERE run_id = ? AND name IN ({})"


def enqueue(
    db: Database,
    run_name: str,
    specs: Iterable[JobSpec],
    *,
    sweep: str,
    train_dir: str,
    suffix: str = "",
    cwd: str | None = None,
    settings: dict | None = None,
    max_attempts: int | None = None,
) -> EnqueueResult:
    """Add a run's jobs in one transaction, ENQUEUE_CHUNK at a time as `specs` makes them, so that memory stays flat
    however many there are. Jobs already there (by name) are left alone: idempotent.

    `specs` is read again if the DB is busy and the transaction is retried: a list, or sweep.expand()'s sequence.
    """
    if iter(specs) is specs:
        raise TypeError("enqueue() may read its specs twice: give a list or sweep.expand()'s sequence, not an iterator")
    cwd = cwd or os.getcwd()

    def _enqueue(tx: Transaction) -> EnqueueResult:
        (now,) = tx.one("SELECT {now}")  # one timestamp for the whole enqueue
        row = tx.first("SELECT id FROM runs WHERE name = :name", {"name": run_name})
        if row is None:
            (run_id,) = tx.one(
                _ADD_RUN,
                {
                    "name": run_name,
                    "sweep": sweep,
                    "train_dir": train_dir,
                    "suffix": suffix,
                    "cwd": cwd,
                    "settings": sql.to_json(settings or {}),
                    "now": now,
                },
            )
        else:
            run_id = row[0]
            if settings:
                _merge_run_settings(tx, run_id, settings, recorded_wins=True)
        result = EnqueueResult(run_id, run_name, 0, 0)
        log_dirs: dict[str, str] = {}
        queued, limit = JobState.QUEUED.value, max_attempts or 1
        for chunk in _chunks(specs, ENQUEUE_CHUNK):
            known = _known_commands(tx, run_id, [spec.name for spec in chunk]) if row is not None else {}
            new_rows = []
            for spec in chunk:
                if spec.name in known:
                    result.existing += 1
                    if known[spec.name] != spec.argv:
                        result.changed += 1
                        result.first_changed = result.first_changed or spec.name
                    continue
                if spec.experiment_dir not in log_dirs:
                    log_dirs[spec.experiment_dir] = os.path.join(cwd, spec.experiment_dir)
                new_rows.append(
                    (
                        run_id,
                        spec.index,
                        spec.name,
                        spec.experiment,
                        _params_json(spec.params),
                        sql.ARGV_FROM_CMD if sql.argv_is_cmd(spec.argv, spec.cmd) else _argv_json(spec.argv),
                        spec.cmd,
                        sql.to_json(spec.env),
                        cwd,
                        spec.root_dir,
                        log_dirs[spec.experiment_dir],
                        queued,
                        0,
                        0,
                        limit,
                        spec.timeout,
                        now,
                        now,
                    )
                )
            if new_rows:
                tx.executemany(_INSERT_JOBS, new_rows)
                result.added += len(new_rows)
            crash_point("mid_enqueue")
        return result

    return db.transact(_enqueue)


# json.dumps' own text for the usual argv and params, at a third of its cost (its Python layer sets up an encoder
# on every call).
_JSON_SCALARS = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    type(None): lambda _: "null",
    bool: lambda b: "true" if b else "false",
    float: lambda x: repr(x) if math.isfinite(x) else json.dumps(x),
}


def _argv_json(argv: list[str]) -> str:
    try:
        return "[" + ", ".join(map(encode_basestring_ascii, argv)) + "]"
    except TypeError:
        return json.dumps(argv)


def _params_json(params: dict) -> str:
    """A flat dict of strings, ints, finite floats, bools and None (what params nearly always are), else json.dumps."""
    try:
        return (
            "{"
            + ", ".join([f"{encode_basestring_ascii(k)}: {_JSON_SCALARS[type(v)](v)}" for k, v in params.items()])
            + "}"
        )
    except (KeyError, TypeError):
        return json.dumps(params)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter), read as they come."""
    items = iter(items)
    while chunk := list(islice(items, size)):
        yield chunk


def _known_commands(tx: Transaction, run_id: int, names: list[str]) -> dict[str, list[str]]:
    """Of `names`, those the run already has, with their argv."""
    known: dict[str, list[str]] = {}
    for listed, part in _positional_in(names):
        for name, argv, cmd in tx.all(_KNOWN_NAMES.format(listed), [run_id, *part]):
            known[name] = sql.argv_of(argv, cmd)
    return known


def _merge_run_settings(tx: Transaction, run_id: int, settings: dict, *, recorded_wins: bool) -> None:
    """Merge settings into the run's: a re-enqueue only fills gaps (recorded_wins); a launch overrides."""
    (old,) = tx.one("SELECT settings FROM runs WHERE id = :run_id", {"run_id": run_id})
    old = sql.from_json(old) or {}
    merged = {**settings, **old} if recorded_wins else {**old, **settings}
    tx.execute(
        "UPDATE runs SET settings = :settings WHERE id = :run_id", {"settings": sql.to_json(merged), "run_id": run_id}
    )


def update_run_settings(db: Database, run_id: int, settings: dict) -> None:
    db.transact(lambda tx: _merge_run_settings(tx, run_id, settings, recorded_wins=False))


_UNFINISHED_OF_RUN = f"run_id = :run_id AND {state_in('state', UNFINISHED)}"


def set_job_limits(db: Database, run_id: int, *, timeout: float | None, max_attempts: int | None) -> None:
    """Apply a launch's --timeout (to jobs without their own) and --max-attempts to the run's unfinished jobs."""

    def _limit(tx: Transaction) -> None:
        params = {"run_id": run_id, "timeout": timeout, "max_attempts": max_attempts}
        if timeout is not None:
            tx.execute(f"UPDATE jobs SET timeout = :timeout WHERE {_UNFINISHED_OF_RUN} AND timeout IS NULL", params)
        if max_attempts is not None:
            tx.execute(f"UPDATE jobs SET max_attempts = :max_attempts WHERE {_UNFINISHED_OF_RUN}", params)

    db.transact(_limit)


# --- reading -----------------------------------------------------------------------------------


def find_run(tx: Transaction, name: str) -> dict:
    rows = tx.dicts("SELECT * FROM runs WHERE name = :name", {"name": name})
    if not rows:
        raise sql.unknown_run(name, [n for (n,) in tx.all("SELECT name FROM runs ORDER BY id")])
    return rows[0]


def get_run(db: Database, name: str) -> dict:
    return db.transact(lambda tx: find_run(tx, name), write=False)


def run_names(db: Database) -> dict[int, str]:
    return db.transact(lambda tx: dict(tx.all("SELECT id, name FROM runs")), write=False)


def only_run(db: Database) -> dict | None:
    """The DB's run when it holds exactly one (so RUN can be left out), else None."""
    rows = db.transact(lambda tx: tx.dicts("SELECT * FROM runs ORDER BY id LIMIT 2"), write=False)
    return rows[0] if len(rows) == 1 else None


def status_counts(db: Database, run: str | None = None) -> list[tuple[str, str, int]]:
    """(run name, state, jobs) for every run, or one: the same SQL as `jq status`."""

    def _counts(tx: Transaction):
        if run is None:
            return [tuple(r) for r in tx.all(sql.COUNTS_SQL)]
        find_run(tx, run)
        return [tuple(r) for r in tx.all(sql.COUNTS_FOR_RUN_SQL, {"run": run})]

    return db.transact(_counts, write=False)


def list_jobs(db: Database, run: str | None = None, state: str | None = None, columns: str = "jobs.*") -> list[dict]:
    """The jobs (their `columns`, and their run's name as `run`), oldest first."""
    return db.transact(lambda tx: tx.dicts(*_jobs_query(tx, run, state, columns)), write=False)


def jobs_in_state(db: Database, run_id: int, state: str, columns: str = "id, name", page: int = 1000) -> Iterator[dict]:
    """The run's jobs in `state`, oldest first, read a page at a time, each page in a short transaction of its own
    (after the last id seen): no read is held open while the caller writes, as a launch records its submissions."""
    query = (
        f"SELECT {columns} FROM jobs WHERE run_id = :run_id AND state = :state AND id > :after ORDER BY id LIMIT {page}"
    )
    return _pages_by_id(db, query, {"run_id": run_id, "state": state})


def job_pages(
    tx: Transaction, run: str | None = None, state: str | None = None, columns: str = "jobs.*"
) -> Iterator[list[dict]]:
    """list_jobs() a page at a time, in a Database.reading() transaction: for runs too big to hold."""
    return tx.dict_pages(*_jobs_query(tx, run, state, columns))


def _jobs_query(tx: Transaction, run: str | None, state: str | None, columns: str) -> tuple[str, dict]:
    query = f"SELECT {columns}, runs.name AS run FROM jobs JOIN runs ON runs.id = jobs.run_id WHERE 1 = 1"
    params: dict = {}
    if run is not None:
        query += " AND jobs.run_id = :run_id"
        params["run_id"] = find_run(tx, run)["id"]
    if state is not None:
        query += " AND jobs.state = :state"
        params["state"] = state
    return query + " ORDER BY jobs.id", params


def last_attempts(db: Database, job_ids: list[int]) -> dict[int, dict]:
    """The newest attempt of each job."""
    return db.transact(lambda tx: newest_attempts(tx, job_ids), write=False) if job_ids else {}


def newest_attempts(tx: Transaction, job_ids: list[int]) -> dict[int, dict]:
    """last_attempts() inside a transaction."""
    found: dict[int, dict] = {}
    for listed, params in sql.in_lists("job", job_ids):
        newest = f"SELECT max(id) FROM attempts WHERE job_id IN ({listed}) GROUP BY job_id"
        found.update((r["job_id"], r) for r in tx.dicts(f"SELECT * FROM attempts WHERE id IN ({newest})", params))
    return found


def job_attempts(db: Database, job_id: int) -> list[dict]:
    def _attempts(tx: Transaction):
        if tx.first("SELECT id FROM jobs WHERE id = :job_id", {"job_id": job_id}) is None:
            raise UserError(f"no job with id {job_id}; `jq list` shows the ids")
        return tx.dicts("SELECT * FROM attempts WHERE job_id = :job_id ORDER BY number", {"job_id": job_id})

    return db.transact(_attempts, write=False)


# --- workers -----------------------------------------------------------------------------------


def slurm_identity(environ=os.environ) -> tuple[str | None, int | None]:
    """(job id, array task id) of the Slurm job this process runs in: the array's id and the task's for an array
    task, else the job's own id and None. An array variable that differs from SLURM_JOB_ID may be an array task's
    or one inherited by a job submitted from inside an array task (see backends/slurm.py's ARRAY_VARIABLES): slurmctld says which."""
    job, array, task = (environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    if array is None or array == job or job is None:
        return (array or job), _int_or_none(task) if array else None
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    found = re.search(r"\bArrayJobId=(\d+) ArrayTaskId=(\d+)", shown)
    if found:
        return found.group(1), int(found.group(2))
    if re.search(rf"\bJobId={job}\b", shown):
        return job, None  # a job of its own: the array's variables are stale
    return array, _int_or_none(task)  # Slurm cannot say: as the environment does


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> float | None:
    """When a process started (seconds since the epoch), which tells a reused PID apart; None if it is gone.

    psutil's create_time(), read the same way (boot time + the start ticks in /proc/PID/stat), but without
    importing psutil on every worker's start."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return (
            None  # a zombie has ended; only its parent's wait() is missing, which a parent that never reaps never does
        )
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the file, starttime


@functools.lru_cache(maxsize=1)
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        return float(next(line.split()[1] for line in f if line.startswith(b"btime ")))


@dataclass
class WorkerInfo:
    id: int
    host: str
    pid: int


_REGISTER_WORKER = (
    "INSERT INTO workers (host, pid, pid_started, boot_id, gpus, slots, backend, run_id, slurm_job_id, "
    "slurm_array_task_id, heartbeat_seconds, started_at, heartbeat_at) VALUES (:host, :pid, :pid_started, :boot_id, "
    ":gpus, :slots, :backend, :run_id, :slurm_job_id, :slurm_array_task_id, :heartbeat_seconds, {now}, {now}) "
    "RETURNING id"
)
_STOP_WORKER = "UPDATE workers SET stopped_at = {now} WHERE id = :worker_id AND stopped_at IS NULL"


def register_worker(
    db: Database,
    *,
    slots: int,
    gpus: str | None,
    backend: str,
    run_id: int | None,
    heartbeat_seconds: float | None = None,
) -> WorkerInfo:
    """A worker's row; `heartbeat_seconds` is how often it will heartbeat (None for a worker that does not)."""
    host, pid = socket.gethostname(), os.getpid()
    slurm_job_id, slurm_array_task_id = slurm_identity() if "SLURM_JOB_ID" in os.environ else (None, None)
    values = dict(
        host=host,
        pid=pid,
        pid_started=process_start_time(pid),
        boot_id=boot_id(),
        gpus=gpus,
        slots=slots,
        backend=backend,
        run_id=run_id,
        slurm_job_id=slurm_job_id,
        slurm_array_task_id=slurm_array_task_id,
        heartbeat_seconds=heartbeat_seconds,
    )
    (worker_id,) = db.transact(lambda tx: tx.one(_REGISTER_WORKER, values))
    return WorkerInfo(worker_id, host, pid)


_NOT_RUNNING = f"state != {literal(AttemptState.RUNNING)}"


def heartbeat(db: Database, worker_id: int, attempt_ids: list[int]) -> list[int] | None:
    """Mark the worker alive; return its attempts that are no longer its to run (cancelled, taken away).

    None means the worker itself was declared dead (a reaper took its jobs): it must stop them all.
    """

    def _beat(tx: Transaction):
        alive = tx.execute(
            "UPDATE workers SET heartbeat_at = {now} WHERE id = :worker_id AND stopped_at IS NULL",
            {"worker_id": worker_id},
        )
        if not alive:
            return None
        if not attempt_ids:
            return []
        listed, params = sql.expand("attempt", attempt_ids)
        return [r[0] for r in tx.all(f"SELECT id FROM attempts WHERE id IN ({listed}) AND {_NOT_RUNNING}", params)]

    return db.transact(_beat)


def stop_worker(db: Database, worker_id: int) -> None:
    db.transact(lambda tx: tx.execute(_STOP_WORKER, {"worker_id": worker_id}))


# --- claim, run, finish ------------------------------------------------------------------------


@dataclass
class ClaimedJob:
    job_id: int
    run_id: int
    name: str
    argv: list[str]
    env: dict | None
    cwd: str
    number: int  # which attempt this is
    attempt_id: int
    timeout: float | None
    log_path: str


# Where an attempt's output goes, made by the statement that opens the attempt, from the job's columns (PostgreSQL)
# or from parameters (SQLite): {dir}/jq_logs/{name}.attempt-{number}.log.
_LOG_PATH = "{dir} || '/jq_logs/' || {name} || '.attempt-' || {number} || '.log'"
_ATTEMPT_COLUMNS = "job_id, number, worker_id, host, gpus, slot, state, started_at, log_path"
_RUNNING = literal(AttemptState.RUNNING)


def _claim_query(dialect: str, by_run: bool, by_job: bool, many: bool = False) -> str:
    """Take the oldest queued job, guarded by its state so that two claimers never share one. On PostgreSQL the
    same statement opens its attempt (an UPDATE and an INSERT in one WITH), so that a claim is one round trip; on
    SQLite, where a statement changes one table, _OPEN_ATTEMPT follows it in the transaction. many: the oldest
    :count jobs, the oldest to the first slot; on PostgreSQL their attempts are opened in the same statement, the
    slots and their GPUs given as two arrays."""
    oldest = f"SELECT id FROM jobs WHERE {job_state_is(Operation.CLAIM, JobState.RUNNING)}"
    if by_run:
        oldest += " AND run_id = :run_id"
    if by_job:
        oldest += " AND id = :job_id"
    oldest += " ORDER BY id LIMIT :count" if many else " ORDER BY id LIMIT 1"
    if dialect == sql.POSTGRESQL:
        oldest += " FOR UPDATE SKIP LOCKED"  # SQLite's BEGIN IMMEDIATE already serializes
    # PostgreSQL picks several ids once, in a CTE of their own: as `id IN (...)` the planner may run the locking
    # subquery again for each row, each run skipping the rows the statement has already moved, and take more jobs
    # than there are slots.
    picked = "SELECT id FROM picked" if many and dialect == sql.POSTGRESQL else oldest
    take = (
        f"UPDATE jobs SET state = {literal(JobState.RUNNING)}, attempts = attempts + 1, worker_id = :worker_id, "
        "started_at = {now}, updated_at = {now}, ended_at = NULL, exit_code = NULL, signal = NULL "
        f"WHERE {job_state_is(Operation.CLAIM, JobState.RUNNING)} AND id {'IN' if many else '='} ({picked}) "
        "RETURNING id, run_id, name, argv, cmd, env, cwd, attempts, timeout, log_dir"
    )
    if dialect == sql.SQLITE:
        return take
    returned = "c.id, c.run_id, c.name, c.argv, c.cmd, c.env, c.cwd, c.attempts, c.timeout, o.id, o.log_path"
    if not many:
        log_path = _LOG_PATH.format(dir="log_dir", name="name", number="attempts")
        return (
            f"WITH claimed AS ({take}), opened AS (INSERT INTO attempts ({_ATTEMPT_COLUMNS}) "
            f"SELECT id, attempts, :worker_id, :host, :gpus, :slot, {_RUNNING}, {{now}}, {log_path} FROM claimed "
            f"RETURNING id, log_path) SELECT {returned} FROM claimed c, opened o"
        )
    log_path = _LOG_PATH.format(dir="c.log_dir", name="c.name", number="c.attempts")
    return (
        f"WITH picked AS MATERIALIZED ({oldest}), claimed AS ({take}), "
        "numbered AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS k FROM claimed c), "
        "slots AS (SELECT * FROM unnest(CAST(:slots AS integer[]), CAST(:gpus AS text[])) WITH ORDINALITY AS s(slot, gpus, k)), "
        f"opened AS (INSERT INTO attempts ({_ATTEMPT_COLUMNS}) "
        f"SELECT c.id, c.attempts, :worker_id, :host, s.gpus, s.slot, {_RUNNING}, {{now}}, {log_path} "
        "FROM numbered c JOIN slots s ON s.k = c.k RETURNING id, job_id, log_path) "
        f"SELECT {returned} FROM claimed c JOIN opened o ON o.job_id = c.id ORDER BY c.id"
    )


_CLAIM_QUERIES = {
    (d, r, j): _claim_query(d, r, j) for d in (sql.SQLITE, sql.POSTGRESQL) for r in (False, True) for j in (False, True)
}
# The oldest :count queued jobs at once (a worker's free slots): on PostgreSQL one statement, on SQLite the jobs, then
# their attempts opened by one INSERT.
_CLAIM_MANY = {
    (d, r, j): _claim_query(d, r, j, many=True)
    for d in (sql.SQLITE, sql.POSTGRESQL)
    for r in (False, True)
    for j in (False, True)
}
_OPEN_ATTEMPT = (
    f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES (:job_id, :number, :worker_id, :host, :gpus, :slot, {_RUNNING}, "
    f"{{now}}, {_LOG_PATH.format(dir=':log_dir', name=':name', number=':number')}) RETURNING id, log_path"
)


def claim_next_job(
    db: Database,
    worker: WorkerInfo,
    *,
    slot: int,
    gpus: str | None,
    run_id: int | None = None,
    job_id: int | None = None,
) -> ClaimedJob | None:
    """Take the oldest queued job (of a run, or one job) and open its attempt, at once: on PostgreSQL one statement,
    which needs no transaction around it (db.Database.statement); on SQLite one short transaction."""
    claim = functools.partial(_claim, worker=worker, slot=slot, gpus=gpus, run_id=run_id, job_id=job_id)
    return db.statement(claim) if db.dialect == sql.POSTGRESQL else db.transact(claim)


def finish_then_claim(
    db: Database,
    finished: list[Finished],
    worker: WorkerInfo,
    slots: list[tuple[int, str | None]],
    *,
    run_id: int | None = None,
    job_id: int | None = None,
) -> tuple[list[JobState | None], list[ClaimedJob]]:
    """Record these attempts' ends (finish_attempt()), then claim a job for each (slot, gpus) while any is queued
    (claim_next_job()), in one transaction: a worker's one write for the jobs that end while others start. Returns
    each end's state, in order, and the jobs claimed, in the order of `slots`: fewer than asked once the queue is
    empty. A lone claim is claim_next_job()'s one statement on PostgreSQL."""
    if not finished and len(slots) == 1:
        [(slot, gpus)] = slots
        job = claim_next_job(db, worker, slot=slot, gpus=gpus, run_id=run_id, job_id=job_id)
        return [], [job] if job is not None else []

    def _batch(tx):
        states = [_finish(tx, f, worker.id) for f in finished]
        if len(slots) > 1:
            return states, _claim_many(tx, worker, slots, run_id, job_id)
        job = _claim(tx, worker, *slots[0], run_id, job_id) if slots else None
        return states, [job] if job is not None else []

    return db.transact(_batch)


def _claim(
    tx: Transaction, worker: WorkerInfo, slot: int, gpus: str | None, run_id: int | None, job_id: int | None
) -> ClaimedJob | None:
    params = {
        "worker_id": worker.id,
        "run_id": run_id,
        "job_id": job_id,
        "host": worker.host,
        "gpus": gpus,
        "slot": slot,
    }
    row = tx.first(_CLAIM_QUERIES[tx.dialect, run_id is not None, job_id is not None], params)
    if row is None:
        return None
    if tx.dialect == sql.SQLITE:
        job_id, name, number, log_dir = row[0], row[2], row[7], row[9]
        opened = {**params, "job_id": job_id, "number": number, "log_dir": log_dir, "name": name}
        row = row[:9] + tx.one(_OPEN_ATTEMPT, opened)
    return _claimed(row)


def _claimed(row: tuple) -> ClaimedJob:
    """A claim's row: the job's (id, run_id, name, argv, cmd, env, cwd, attempts, timeout), its attempt's (id,
    log_path)."""
    job_id, run_id, name, argv, cmd, env, cwd, number, timeout, attempt_id, log_path = row
    return ClaimedJob(
        job_id, run_id, name, sql.argv_of(argv, cmd), sql.from_json(env), cwd, number, attempt_id, timeout, log_path
    )


def _claim_many(
    tx: Transaction, worker: WorkerInfo, slots: list[tuple[int, str | None]], run_id: int | None, job_id: int | None
) -> list[ClaimedJob]:
    """_claim() for each of `slots`, the oldest queued job to the first slot: one statement on PostgreSQL, two on
    SQLite."""
    params: dict[str, Any] = {"worker_id": worker.id, "run_id": run_id, "job_id": job_id, "count": len(slots)}
    query = _CLAIM_MANY[tx.dialect, run_id is not None, job_id is not None]
    if tx.dialect == sql.POSTGRESQL:
        params.update(host=worker.host, slots=[slot for slot, _ in slots], gpus=[gpus for _, gpus in slots])
        return [_claimed(row) for row in tx.all(query, params)]
    rows = sorted(tx.all(query, params))
    if not rows:
        return []
    values: list = []
    for (job, _, name, *_, number, _, log_dir), (slot, gpus) in zip(rows, slots):
        values += [job, number, worker.id, worker.host, gpus, slot, log_dir, name, number]
    opened = {job: (attempt_id, log_path) for attempt_id, job, log_path in tx.all(_open_attempts(len(rows)), values)}
    return [_claimed(row[:9] + opened[row[0]]) for row in rows]


@functools.lru_cache(maxsize=64)
def _open_attempts(count: int) -> str:
    """_OPEN_ATTEMPT for `count` attempts in one statement, with positional parameters: SQLite looks a named one up
    by a linear search."""
    row = f"(?, ?, ?, ?, ?, ?, {_RUNNING}, {{now}}, {_LOG_PATH.format(dir='?', name='?', number='?')})"
    return f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES {', '.join([row] * count)} RETURNING id, job_id, log_path"


def record_pid(db: Database, attempt_id: int, pid: int) -> None:
    db.transact(
        lambda tx: tx.execute(
            "UPDATE attempts SET pid = :pid WHERE id = :attempt_id", {"attempt_id": attempt_id, "pid": pid}
        )
    )


# How a job moves on when an attempt ends: its final state, or back to the queue for automatic retries while
# its failures stay under max_attempts.
_AFTER = {
    AttemptState.SUCCEEDED: (JobState.SUCCEEDED, False),
    AttemptState.FAILED: (JobState.FAILED, True),
    AttemptState.TIMEOUT: (JobState.TIMEOUT, True),
    AttemptState.INTERRUPTED: (JobState.QUEUED, False),
    AttemptState.CANCELLED: (JobState.CANCELLED, False),
}


def _move_job_query(outcome: AttemptState) -> str:
    """The job's move when its attempt ends with `outcome`: guarded by the job's state and by whose attempt it is."""
    final, retry = _AFTER[outcome]
    if retry:
        state = (
            f"state = CASE WHEN failures + 1 < max_attempts THEN {literal(JobState.QUEUED)} ELSE {literal(final)} END, "
            "failures = failures + 1"
        )
        targets: tuple[JobState, ...] = (final, JobState.QUEUED)
    else:
        state, targets = f"state = {literal(final)}", (final,)
    return (
        f"UPDATE jobs SET {state}, exit_code = :exit_code, signal = :signal, worker_id = NULL, updated_at = {{now}}, "
        "ended_at = {now} "
        f"WHERE id = :job_id AND {job_state_is(Operation.FINISH, *targets)} AND attempts = :number "
        "AND worker_id = :worker_id RETURNING state"
    )


def _close_attempt_query(outcome: AttemptState) -> str:
    return (
        f"UPDATE attempts SET state = {literal(outcome)}, ended_at = {{now}}, exit_code = :exit_code, signal = :signal, "
        f"reason = :reason, pid = COALESCE(pid, :pid) WHERE id = :attempt_id AND {attempt_state_is(Operation.FINISH, outcome)}"
    )


_MOVE_JOB = {outcome: _move_job_query(outcome) for outcome in _AFTER}
_CLOSE_ATTEMPT = {outcome: _close_attempt_query(outcome) for outcome in _AFTER}


@dataclass
class Finished:
    """How an attempt ended, to be recorded."""

    job: ClaimedJob
    outcome: AttemptState
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    pid: int | None = None  # recorded now if the job ended before its pid was
    seconds: float | None = None  # how long it ran, for the worker's messages


def finish_attempt(
    db: Database,
    job: ClaimedJob,
    worker_id: int,
    outcome: AttemptState,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    reason: str | None = None,
    pid: int | None = None,
) -> JobState | None:
    """Record how an attempt ended and move its job on. Exactly once: None if the job was no longer ours."""
    return record_finished(db, Finished(job, outcome, exit_code, signal, reason, pid), worker_id)


def record_finished(db: Database, finished: Finished, worker_id: int) -> JobState | None:
    """finish_attempt() for an attempt whose end is already a Finished."""
    return db.transact(lambda tx: _finish(tx, finished, worker_id))


def _finish(tx: Transaction, f: Finished, worker_id: int) -> JobState | None:
    params = {
        "job_id": f.job.job_id,
        "number": f.job.number,
        "worker_id": worker_id,
        "attempt_id": f.job.attempt_id,
        "exit_code": f.exit_code,
        "signal": f.signal,
        "reason": f.reason,
        "pid": f.pid,
    }
    moved = tx.first(_MOVE_JOB[f.outcome], params)
    if moved is None:
        return None
    tx.execute(_CLOSE_ATTEMPT[f.outcome], params)
    return JobState(moved[0])


# --- lost workers --------------------------------------------------------------------------------


@dataclass
class LostWorker:
    id: int
    host: str
    pid: int
    why: str


def find_dead_workers(db: Database, lease: float = DEFAULT_LEASE_SECONDS, by_lease: bool = True) -> list[LostWorker]:
    """Workers not stopped cleanly that are gone: on this host by PID (and its start time), elsewhere by lease.
    by_lease=False: by PID alone, for a reaper that may not yet judge heartbeats (reaper.reap)."""
    rows = db.transact(
        lambda tx: tx.dicts(
            "SELECT *, heartbeat_at < {ago} AS expired FROM workers WHERE stopped_at IS NULL",
            {"lease_seconds": lease},
        ),
        write=False,
    )
    host, this_boot = socket.gethostname(), boot_id()
    dead = []
    for w in rows:
        if w["host"] != host:
            if w["expired"] and by_lease:
                dead.append(LostWorker(w["id"], w["host"], w["pid"], f"no heartbeat for {lease:.0f}s"))
            continue
        if w["boot_id"] and this_boot and w["boot_id"] != this_boot:
            dead.append(LostWorker(w["id"], w["host"], w["pid"], "its host rebooted"))
            continue
        started = process_start_time(w["pid"])
        if started is None or (w["pid_started"] is not None and abs(started - w["pid_started"]) > 1.0):
            dead.append(LostWorker(w["id"], w["host"], w["pid"], f"process {w['pid']} is gone"))
            continue
        if w["expired"] and by_lease:
            # Alive but silent past the lease: stopped (SIGSTOP) or hung. Kill it, or its jobs would be stuck.
            import psutil

            try:
                proc = psutil.Process(w["pid"])
                proc.kill()
                proc.wait(5)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass
            dead.append(LostWorker(w["id"], w["host"], w["pid"], f"hung for over {lease:.0f}s, killed"))
    return dead


def attempt_states(db: Database, attempt_ids: list[int]) -> dict[int, str]:
    def _states(tx: Transaction):
        found: dict[int, str] = {}
        for listed, params in sql.in_lists("attempt", attempt_ids):
            found.update(tx.all(f"SELECT id, state FROM attempts WHERE id IN ({listed})", params))
        return found

    return db.transact(_states, write=False)


_AWAITING_REAPER = (
    "SELECT 1 FROM attempts a JOIN workers w ON w.id = a.worker_id "
    f"WHERE {state_in('a.state', [AttemptState.RUNNING])} AND w.stopped_at IS NULL AND w.heartbeat_at < {{ago}} "
    "AND w.id <> :worker_id LIMIT 1"
)


def jobs_await_reaper(db: Database, lease: float, worker_id: int) -> bool:
    """Another worker holds running attempts but has been silent for a lease: a reaper is to requeue them."""
    rows = db.transact(
        lambda tx: tx.all(_AWAITING_REAPER, {"lease_seconds": lease, "worker_id": worker_id}), write=False
    )
    return bool(rows)


def running_attempts_of(db: Database, worker_ids: list[int]) -> list[dict]:
    listed, params = sql.expand("worker", worker_ids)
    query = f"SELECT * FROM attempts WHERE worker_id IN ({listed}) AND {state_in('state', [AttemptState.RUNNING])}"
    return db.transact(lambda tx: tx.dicts(query, params), write=False)


# Jobs before attempts, in the order finish_attempt and cancel_jobs lock them, so that on PostgreSQL these
# transactions wait for each other instead of deadlocking.
_REQUEUE_JOBS_OF_WORKER = (
    f"UPDATE jobs SET state = {literal(JobState.QUEUED)}, worker_id = NULL, updated_at = {{now}} "
    f"WHERE worker_id = :worker_id AND {job_state_is(Operation.REQUEUE_LOST, JobState.QUEUED)} RETURNING id"
)
_LOSE_ATTEMPTS_OF_WORKER = (
    # A lost attempt ended when its worker was last heard from (or when it started, if later), not when a reaper noticed.
    f"UPDATE attempts SET state = {literal(AttemptState.LOST)}, reason = :reason, ended_at = COALESCE((SELECT CASE "
    "WHEN w.heartbeat_at > attempts.started_at THEN w.heartbeat_at ELSE attempts.started_at END FROM workers w "
    "WHERE w.id = :worker_id), {now}) "
    f"WHERE worker_id = :worker_id AND {attempt_state_is(Operation.REQUEUE_LOST, AttemptState.LOST)}"
)


def requeue_jobs_of_dead_worker(db: Database, worker: LostWorker) -> list[int]:
    """Mark the worker stopped, its running attempts lost, and put its jobs back in the queue: one transaction.

    The caller has already killed the attempts' processes when they ran on this host.
    """

    def _requeue(tx: Transaction) -> list[int]:
        noticed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        params = {
            "worker_id": worker.id,
            "reason": f"worker {worker.id} lost: {worker.why}; noticed at {noticed} on {socket.gethostname()}",
        }
        if not tx.execute(_STOP_WORKER, params):
            return []  # another reaper got there first
        requeued = [r[0] for r in tx.all(_REQUEUE_JOBS_OF_WORKER, params)]
        tx.execute(_LOSE_ATTEMPTS_OF_WORKER, params)
        return requeued

    return db.transact(_requeue)


# --- control ---------------------------------------------------------------------------------------


def select_job_ids(tx: Transaction, run: str | None, job_ids: list[int], states: Iterable[str]) -> list[int]:
    """Of `job_ids`, every one of which must exist, those of `run` (or any run) in one of `states`."""
    states = list(states)
    run_id = find_run(tx, run)["id"] if run is not None else None
    found: dict[int, tuple] = {}
    for listed, params in sql.in_lists("job", job_ids):
        found.update(
            (r[0], r[1:]) for r in tx.all(f"SELECT id, state, run_id FROM jobs WHERE id IN ({listed})", params)
        )
    unknown = sorted(set(job_ids) - found.keys())
    if unknown:
        raise UserError(f"no job with id {', '.join(map(str, unknown))}; `jq list` shows the ids")
    return sorted(i for i, (state, in_run) in found.items() if state in states and run_id in (None, in_run))


# A cancel or retry of a whole run moves its jobs a window of ids at a time, so that no list of a big run's ids is
# ever held; the index on (run_id, state, id) finds each window's jobs in a state it moves.
ID_WINDOW = 10_000


def _job_batches(
    tx: Transaction, run: str | None, job_ids: list[int] | None, states: Iterable[JobState]
) -> Iterator[tuple[str, dict]]:
    """The jobs to move, as WHERE terms for a few thousand jobs each: the given ids that are of `run` and in one of
    `states`, or windows of ids over the jobs of `run` (or of every run)."""
    if job_ids:
        for listed, params in sql.in_lists("job", select_job_ids(tx, run, job_ids, [s.value for s in states])):
            yield f"id IN ({listed})", params
        return
    where, params = ("run_id = :run_id", {"run_id": find_run(tx, run)["id"]}) if run is not None else ("1 = 1", {})
    low, high = tx.one("SELECT min(id), max(id) FROM jobs")  # the table's, read from its rowid b-tree at once
    if low is None:
        return
    for start in range(low, high + 1, ID_WINDOW):
        yield f"{where} AND id >= :low AND id < :high", {**params, "low": start, "high": start + ID_WINDOW}


def _positional_in(values: list) -> Iterator[tuple[str, list]]:
    """IN lists with positional parameters, which SQLite binds by place (named ones it finds by a linear search);
    sql.IN_LIST_CHUNK at a time, within the 999 parameters SQLite took before 3.32."""
    for part in sql.chunks(values):
        yield ", ".join("?" * len(part)), part


# The jobs selected may have moved on by the time they are updated (PostgreSQL reads committed rows): each
# UPDATE moves only those still in a state it may move from, and says which it moved.
_CANCELLABLE_STATES = from_states(JOB_MOVES, Operation.CANCEL, JobState.CANCELLED)
_CANCELLABLE = state_in("state", _CANCELLABLE_STATES)
_CANCELLABLE_ATTEMPT = attempt_state_is(Operation.CANCEL, AttemptState.CANCELLED)
_RETRYABLE = from_states(JOB_MOVES, Operation.RETRY, JobState.QUEUED)


def cancel_jobs(db: Database, run: str | None = None, job_ids: list[int] | None = None) -> tuple[int, list[dict]]:
    """Cancel queued and running jobs. Returns (how many, the attempts it cancelled, whose processes must stop)."""

    def _cancel(tx: Transaction):
        cancelled, attempts = 0, []
        for where, params in _job_batches(tx, run, job_ids, _CANCELLABLE_STATES):
            moved = [
                r[0]
                for r in tx.all(
                    f"UPDATE jobs SET state = {literal(JobState.CANCELLED)}, worker_id = NULL, updated_at = {{now}}, "
                    f"ended_at = {{now}} WHERE {where} AND {_CANCELLABLE} RETURNING id",
                    params,
                )
            ]
            cancelled += len(moved)
            # only the attempts of jobs this cancel moved: a job that has just ended keeps its attempt
            for listed, ids in _positional_in(moved):
                attempts += tx.dicts(
                    f"UPDATE attempts SET state = {literal(AttemptState.CANCELLED)}, ended_at = {{now}}, "
                    f"reason = 'cancelled by jq cancel' WHERE job_id IN ({listed}) AND {_CANCELLABLE_ATTEMPT} "
                    "RETURNING *",
                    ids,
                )
        return cancelled, attempts

    return db.transact(_cancel)


def retry_jobs(
    db: Database, run: str | None = None, job_ids: list[int] | None = None, failed_only: bool = False
) -> int:
    """Put failed (and, unless failed_only, timed-out and cancelled) jobs back in the queue."""
    states = [s for s in _RETRYABLE if s == JobState.FAILED or not failed_only]
    retryable = state_in("state", states)

    def _retry(tx: Transaction):
        retried = 0
        for where, params in _job_batches(tx, run, job_ids, states):
            retried += tx.execute(
                f"UPDATE jobs SET state = {literal(JobState.QUEUED)}, failures = 0, "
                f"updated_at = {{now}} WHERE {where} AND {retryable}",
                params,
            )
        return retried

    return db.transact(_retry)


def record_submission(db: Database, **values) -> int:
    """A Slurm or NGC submission of the run's workers or jobs (columns of `submissions` as keywords)."""
    params = {k: sql.to_json(v) if k in sql.JSON_COLUMNS else v for k, v in values.items()}
    columns = ", ".join(params)
    query = f"INSERT INTO submissions ({columns}, submitted_at) VALUES ({', '.join(':' + k for k in params)}, {{now}}) RETURNING id"
    return db.transact(lambda tx: tx.one(query, params))[0]


def submission_backends(db: Database, run_id: int) -> list[str]:
    """The backends the run was submitted to, by name."""
    query = "SELECT DISTINCT backend FROM submissions WHERE run_id = :run_id ORDER BY backend"
    return [backend for (backend,) in db.transact(lambda tx: tx.all(query, {"run_id": run_id}), write=False)]


def run_submissions(db: Database, run_id: int, backend: str | None = None, per_job: bool = True) -> list[dict]:
    """The run's submissions (to `backend`); per_job=False leaves out those of one job each, which grow with the run."""
    query = "SELECT * FROM submissions WHERE run_id = :run_id" + (" AND backend = :backend" if backend else "")
    query += "" if per_job else " AND mode <> 'per-job'"
    return db.transact(lambda tx: tx.dicts(query + " ORDER BY id", {"run_id": run_id, "backend": backend}), write=False)


def per_job_submission_counts(db: Database, run_id: int) -> dict[str, dict[str, int]]:
    """How many of the run's submissions of one job each are in each state, by backend."""
    query = (
        "SELECT backend, state, count(*) FROM submissions WHERE run_id = :run_id AND mode = 'per-job' "
        "GROUP BY backend, state ORDER BY backend, state"
    )
    counts: dict[str, dict[str, int]] = {}
    for backend, state, n in db.transact(lambda tx: tx.all(query, {"run_id": run_id}), write=False):
        counts.setdefault(backend, {})[state] = n
    return counts


def update_submission(db: Database, submission_id: int, **values) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    query = f"UPDATE submissions SET {assignments} WHERE id = :submission_id"
    db.transact(lambda tx: tx.execute(query, {**values, "submission_id": submission_id}))


# --- a run's submissions, a page at a time: NGC's per-job launch, refresh and cancel on runs too big to hold ---------

# A job-by-job submission still standing: submitted (or possibly submitted: `unconfirmed`), or in any state the
# backend reported since (`jq status --refresh` stores NGC's: QUEUED, RUNNING, FINISHED_SUCCESS...), unless the
# submission failed, was cancelled, or the backend says the job failed or was killed, when a launch submits it again.
_STANDING = "state NOT IN ('failed', 'cancelled') AND substr(state, 1, 6) NOT IN ('FAILED', 'KILLED')"
# The queued jobs without a job-by-job submission to the backend still standing: each job's submissions are found
# by ix_submissions_job (migration 0005).
_NOT_SUBMITTED = (
    "NOT EXISTS (SELECT 1 FROM submissions s WHERE s.job_id = jobs.id AND s.run_id = :run_id "
    f"AND s.backend = :backend AND {_STANDING.replace('state', 's.state')})"
)
_UNSUBMITTED = "FROM jobs WHERE run_id = :run_id AND state = :state AND {not_submitted}"


def count_unsubmitted_jobs(db: Database, run_id: int, state: str, backend: str) -> int:
    """How many of the run's jobs in `state` have no submission of their own to `backend` still standing."""
    query = "SELECT count(*) " + _UNSUBMITTED.format(not_submitted=_NOT_SUBMITTED)
    params = {"run_id": run_id, "state": state, "backend": backend}
    return db.transact(lambda tx: tx.one(query, params)[0], write=False)


def unsubmitted_jobs(
    db: Database, run_id: int, state: str, backend: str, columns: str = "id, name", page: int = 1000
) -> Iterator[dict]:
    """The jobs count_unsubmitted_jobs() counts, oldest first, paged as jobs_in_state() pages: a page is read after
    the caller has recorded the submissions of the page before."""
    query = (
        f"SELECT {columns} {_UNSUBMITTED.format(not_submitted=_NOT_SUBMITTED)} AND id > :after ORDER BY id LIMIT {page}"
    )
    return _pages_by_id(db, query, {"run_id": run_id, "state": state, "backend": backend})


def submissions_of_run(
    db: Database, run_id: int, backend: str, where: str = "1 = 1", columns: str = "*", page: int = 1000
) -> Iterator[dict]:
    """run_submissions() (those that match `where`) a page at a time, each page in a short transaction of its own."""
    query = (
        f"SELECT {columns} FROM submissions WHERE run_id = :run_id AND backend = :backend AND {where} "
        f"AND id > :after ORDER BY id LIMIT {page}"
    )
    return _pages_by_id(db, query, {"run_id": run_id, "backend": backend})


def _pages_by_id(db: Database, query: str, params: dict) -> Iterator[dict]:
    """The rows of `query`, which reads a page of them after the id :after, a page at a time."""
    params = {**params, "after": 0}
    while rows := db.transact(lambda tx: tx.dicts(query, params), write=False):
        yield from rows
        params["after"] = rows[-1]["id"]


def set_submissions_state(db: Database, submission_ids: list[int], state: str) -> None:
    def _set(tx: Transaction) -> None:
        for listed, params in sql.in_lists("submission", submission_ids):
            tx.execute(f"UPDATE submissions SET state = :state WHERE id IN ({listed})", {**params, "state": state})

    db.transact(_set)
