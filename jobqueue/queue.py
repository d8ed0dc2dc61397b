"""Queue operations: each move of a job is one function and one transaction, named after what it does.

enqueue -> claim_next_job -> record_pid -> finish_attempt; requeue_lost_jobs, cancel_jobs and
retry_jobs move jobs back or out. The allowed moves are listed in states.py.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import sqlalchemy as sa

from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.processes import crash_point
from jobqueue.models import attempts, db_ago, db_now, jobs, runs, submissions, workers
from jobqueue.states import AttemptState, JobState
from jobqueue.sweep import JobSpec

DEFAULT_LEASE_SECONDS = 60.0
ENQUEUE_CHUNK = 10_000


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
    changed: list[str] = field(default_factory=list)  # names already queued with another command


def enqueue(
    db: Database,
    run_name: str,
    specs: list[JobSpec],
    *,
    sweep: str,
    train_dir: str,
    suffix: str = "",
    cwd: str | None = None,
    settings: dict | None = None,
    max_attempts: int | None = None,
) -> EnqueueResult:
    """Add a run's jobs in one transaction. Jobs already there (by name) are left alone: idempotent."""
    cwd = cwd or os.getcwd()

    def _enqueue(conn: sa.Connection) -> EnqueueResult:
        now = utcnow()
        run_id = conn.execute(sa.select(runs.c.id).where(runs.c.name == run_name)).scalar()
        if run_id is None:
            run_id = conn.execute(
                runs.insert()
                .values(name=run_name, sweep=sweep, train_dir=train_dir, suffix=suffix, cwd=cwd,
                        settings=settings or {}, created_at=now)
                .returning(runs.c.id)
            ).scalar_one()
            existing: dict[str, list] = {}
        else:
            if settings:
                old = conn.execute(sa.select(runs.c.settings).where(runs.c.id == run_id)).scalar() or {}
                conn.execute(runs.update().where(runs.c.id == run_id).values(settings={**settings, **old}))
            # argv as its JSON text: decoding 100,000 of them would cost more than the whole comparison.
            argv_text = sa.type_coerce(jobs.c.argv, sa.Text)
            existing = dict(conn.execute(sa.select(jobs.c.name, argv_text).where(jobs.c.run_id == run_id)).all())
        new_rows = []
        changed = []
        log_dirs: dict[str, str] = {}
        for spec in specs:
            if spec.name in existing:
                if existing[spec.name] != json.dumps(spec.argv):
                    changed.append(spec.name)
                continue
            if spec.experiment_dir not in log_dirs:
                log_dirs[spec.experiment_dir] = os.path.join(cwd, spec.experiment_dir)
            new_rows.append((
                run_id, spec.index, spec.name, spec.experiment, spec.params, spec.argv, spec.cmd, spec.env, cwd,
                spec.root_dir, log_dirs[spec.experiment_dir], JobState.QUEUED.value, 0, 0, max_attempts or 1,
                spec.timeout, now, now,
            ))
        for start in range(0, len(new_rows), ENQUEUE_CHUNK):
            _insert_jobs(conn, db.is_sqlite, new_rows[start:start + ENQUEUE_CHUNK])
            crash_point("mid_enqueue")
        return EnqueueResult(run_id, run_name, len(new_rows), len(specs) - len(new_rows), changed)

    return db.run(_enqueue)


_JOB_COLUMNS = ("run_id", "idx", "name", "experiment", "params", "argv", "cmd", "env", "cwd", "root_dir", "log_dir",
                "state", "attempts", "failures", "max_attempts", "timeout", "created_at", "updated_at")
_INSERT_JOBS_SQLITE = f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' * len(_JOB_COLUMNS))})"


def _insert_jobs(conn: sa.Connection, sqlite: bool, rows: list[tuple]) -> None:
    """Insert many job rows (tuples in _JOB_COLUMNS order).

    On SQLite the driver gets them directly: SQLAlchemy's per-row parameter processing costs about 20 us a
    row, several times the insert itself. Values are serialized as SQLAlchemy would (json.dumps, and its
    DATETIME text), so the rows are the same either way."""
    if not sqlite:
        conn.execute(jobs.insert(), [dict(zip(_JOB_COLUMNS, row)) for row in rows])
        return
    created = rows[0][16].strftime("%Y-%m-%d %H:%M:%S.%f")  # one timestamp for the whole enqueue
    dumps = json.dumps
    conn.exec_driver_sql(_INSERT_JOBS_SQLITE, [
        (*row[:4], dumps(row[4]), dumps(row[5]), row[6], dumps(row[7]), *row[8:16], created, created) for row in rows
    ])


def update_run_settings(db: Database, run_id: int, settings: dict) -> None:
    def _update(conn):
        old = conn.execute(sa.select(runs.c.settings).where(runs.c.id == run_id)).scalar() or {}
        conn.execute(runs.update().where(runs.c.id == run_id).values(settings={**old, **settings}))

    db.run(_update)


def set_job_limits(db: Database, run_id: int, *, timeout: float | None, max_attempts: int | None) -> None:
    """Apply a launch's --timeout (to jobs without their own) and --max-attempts to the run's unfinished jobs."""

    def _limit(conn):
        unfinished = (jobs.c.run_id == run_id) & jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
        if timeout is not None:
            conn.execute(jobs.update().where(unfinished, jobs.c.timeout.is_(None)).values(timeout=timeout))
        if max_attempts is not None:
            conn.execute(jobs.update().where(unfinished).values(max_attempts=max_attempts))

    db.run(_limit)


# --- reading -----------------------------------------------------------------------------------


def find_run(conn: sa.Connection, name: str) -> dict:
    row = conn.execute(sa.select(runs).where(runs.c.name == name)).mappings().first()
    if row is None:
        from jobqueue.report import unknown_run

        raise unknown_run(name, list(conn.execute(sa.select(runs.c.name).order_by(runs.c.id)).scalars()))
    return dict(row)


def get_run(db: Database, name: str) -> dict:
    return db.run(lambda conn: find_run(conn, name), write=False)


def run_names(db: Database) -> dict[int, str]:
    return db.run(lambda conn: dict(conn.execute(sa.select(runs.c.id, runs.c.name)).all()), write=False)


def only_run(db: Database) -> dict | None:
    """The DB's run when it holds exactly one (so RUN can be left out), else None."""
    rows = db.run(lambda conn: conn.execute(sa.select(runs).limit(2)).mappings().all(), write=False)
    return dict(rows[0]) if len(rows) == 1 else None


def status_counts(db: Database, run: str | None = None) -> list[tuple[str, str, int]]:
    """(run name, state, jobs) for every run, or one: the same SQL as `jq status`."""
    from jobqueue.report import COUNTS_FOR_RUN_SQL, COUNTS_SQL

    def _counts(conn):
        if run is None:
            return [tuple(r) for r in conn.exec_driver_sql(COUNTS_SQL)]
        find_run(conn, run)
        return [tuple(r) for r in conn.execute(sa.text(COUNTS_FOR_RUN_SQL), {"run": run})]

    return db.run(_counts, write=False)


def list_jobs(db: Database, run: str | None = None, state: str | None = None, ids: Iterable[int] | None = None) -> list[dict]:
    def _list(conn):
        stmt = sa.select(jobs, runs.c.name.label("run")).join(runs, runs.c.id == jobs.c.run_id).order_by(jobs.c.id)
        if run is not None:
            stmt = stmt.where(jobs.c.run_id == find_run(conn, run)["id"])
        if state is not None:
            stmt = stmt.where(jobs.c.state == state)
        if ids is not None:
            stmt = stmt.where(jobs.c.id.in_(list(ids)))
        return [dict(r) for r in conn.execute(stmt).mappings()]

    return db.run(_list, write=False)


def last_attempts(db: Database, job_ids: list[int]) -> dict[int, dict]:
    """The newest attempt of each job."""
    if not job_ids:
        return {}

    def _last(conn):
        newest = sa.select(sa.func.max(attempts.c.id)).where(attempts.c.job_id.in_(job_ids)).group_by(attempts.c.job_id)
        rows = conn.execute(sa.select(attempts).where(attempts.c.id.in_(newest))).mappings()
        return {r["job_id"]: dict(r) for r in rows}

    return db.run(_last, write=False)


def job_attempts(db: Database, job_id: int) -> list[dict]:
    def _attempts(conn):
        if conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
            raise UserError(f"no job with id {job_id}; `jq list` shows the ids")
        stmt = sa.select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
        return [dict(r) for r in conn.execute(stmt).mappings()]

    return db.run(_attempts, write=False)


# --- workers -----------------------------------------------------------------------------------


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass
class WorkerInfo:
    id: int
    host: str
    pid: int


def register_worker(db: Database, *, slots: int, gpus: str | None, backend: str, run_id: int | None) -> WorkerInfo:
    host, pid = socket.gethostname(), os.getpid()
    values = dict(
        host=host, pid=pid, pid_started=process_start_time(pid), boot_id=boot_id(), gpus=gpus, slots=slots,
        backend=backend, run_id=run_id, slurm_job_id=os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
        slurm_array_task_id=_int_or_none(os.environ.get("SLURM_ARRAY_TASK_ID")),
        started_at=db_now(), heartbeat_at=db_now(),
    )
    worker_id = db.run(lambda conn: conn.execute(workers.insert().values(**values).returning(workers.c.id)).scalar_one())
    return WorkerInfo(worker_id, host, pid)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def heartbeat(db: Database, worker_id: int, attempt_ids: list[int]) -> list[int] | None:
    """Mark the worker alive; return its attempts that are no longer its to run (cancelled, taken away).

    None means the worker itself was declared dead (a reaper took its jobs): it must stop them all.
    """

    def _beat(conn):
        alive = conn.execute(
            workers.update().where(workers.c.id == worker_id, workers.c.stopped_at.is_(None)).values(heartbeat_at=db_now())
        ).rowcount
        if not alive:
            return None
        if not attempt_ids:
            return []
        stmt = sa.select(attempts.c.id).where(attempts.c.id.in_(attempt_ids), attempts.c.state != AttemptState.RUNNING.value)
        return list(conn.execute(stmt).scalars())

    return db.run(_beat)


def stop_worker(db: Database, worker_id: int) -> None:
    db.run(lambda conn: conn.execute(
        workers.update().where(workers.c.id == worker_id, workers.c.stopped_at.is_(None)).values(stopped_at=db_now())
    ))


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


@functools.lru_cache(maxsize=None)
def _claim_statement(postgres: bool, by_run: bool, by_job: bool):
    """Built once per shape: constructing SQLAlchemy statements costs more than running them on SQLite."""
    oldest = sa.select(jobs.c.id).where(jobs.c.state == JobState.QUEUED.value).order_by(jobs.c.id).limit(1)
    if by_run:
        oldest = oldest.where(jobs.c.run_id == sa.bindparam("p_run_id"))
    if by_job:
        oldest = oldest.where(jobs.c.id == sa.bindparam("p_job_id"))
    if postgres:
        oldest = oldest.with_for_update(skip_locked=True)  # SQLite's BEGIN IMMEDIATE already serializes
    return (
        jobs.update()
        .where(jobs.c.id == oldest.scalar_subquery(), jobs.c.state == JobState.QUEUED.value)
        .values(state=JobState.RUNNING.value, attempts=jobs.c.attempts + 1, worker_id=sa.bindparam("p_worker_id"),
                started_at=db_now(), updated_at=db_now(), ended_at=None, exit_code=None, signal=None)
        .returning(jobs.c.id, jobs.c.run_id, jobs.c.name, jobs.c.argv, jobs.c.env, jobs.c.cwd,
                   jobs.c.log_dir, jobs.c.attempts, jobs.c.timeout)
    )


_open_attempt = (
    attempts.insert()
    .values(job_id=sa.bindparam("p_job_id"), number=sa.bindparam("p_number"), worker_id=sa.bindparam("p_worker_id"),
            host=sa.bindparam("p_host"), gpus=sa.bindparam("p_gpus"), slot=sa.bindparam("p_slot"),
            state=AttemptState.RUNNING.value, started_at=db_now(), log_path=sa.bindparam("p_log_path"))
    .returning(attempts.c.id)
)


def claim_next_job(
    db: Database, worker: WorkerInfo, *, slot: int, gpus: str | None,
    run_id: int | None = None, job_id: int | None = None,
) -> ClaimedJob | None:
    """Take the oldest queued job (of a run, or one job) and open its attempt, in one short transaction."""
    return db.run_on_driver(lambda tx: _claim(tx, worker, slot, gpus, run_id, job_id))


def finish_then_claim(
    db: Database, finished: Finished, worker: WorkerInfo, *, slot: int, gpus: str | None,
    run_id: int | None = None, job_id: int | None = None,
) -> tuple[JobState | None, ClaimedJob | None]:
    """finish_attempt() and claim_next_job() in one transaction: a slot's one write per job in a busy sweep."""
    def _both(tx):
        state = _finish(tx, finished, worker.id)
        return state, _claim(tx, worker, slot, gpus, run_id, job_id)

    return db.run_on_driver(_both)


def _claim(tx, worker: WorkerInfo, slot: int, gpus: str | None, run_id: int | None, job_id: int | None) -> ClaimedJob | None:
    take = _claim_statement(not tx.db.is_sqlite, run_id is not None, job_id is not None)
    row = tx.first(take, {"p_worker_id": worker.id, "p_run_id": run_id, "p_job_id": job_id})
    if row is None:
        return None
    job_id, run_id, name, argv, env, cwd, log_dir, number, timeout = row
    log_path = os.path.join(log_dir, "jq_logs", f"{name}.attempt-{number}.log")
    (attempt_id,) = tx.first(_open_attempt, {
        "p_job_id": job_id, "p_number": number, "p_worker_id": worker.id, "p_host": worker.host,
        "p_gpus": gpus, "p_slot": slot, "p_log_path": log_path,
    })
    return ClaimedJob(job_id, run_id, name, argv, env, cwd, number, attempt_id, timeout, log_path)


_record_pid = attempts.update().where(attempts.c.id == sa.bindparam("p_attempt_id")).values(pid=sa.bindparam("p_pid"))


def record_pid(db: Database, attempt_id: int, pid: int) -> None:
    db.run_on_driver(lambda tx: tx.execute(_record_pid, {"p_attempt_id": attempt_id, "p_pid": pid}))


def _job_state_after(outcome: AttemptState):
    if outcome == AttemptState.SUCCEEDED:
        return JobState.SUCCEEDED.value
    if outcome in (AttemptState.FAILED, AttemptState.TIMEOUT):
        final = JobState.FAILED.value if outcome == AttemptState.FAILED else JobState.TIMEOUT.value
        # Automatic retries: back to the queue while failures stay under max_attempts.
        return sa.case((jobs.c.failures + 1 < jobs.c.max_attempts, JobState.QUEUED.value), else_=final)
    if outcome == AttemptState.INTERRUPTED:
        return JobState.QUEUED.value
    if outcome == AttemptState.CANCELLED:
        return JobState.CANCELLED.value
    raise ValueError(outcome)


@functools.lru_cache(maxsize=None)
def _finish_statements(outcome: AttemptState):
    failed = outcome in (AttemptState.FAILED, AttemptState.TIMEOUT)
    move_job = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("p_job_id"), jobs.c.state == JobState.RUNNING.value,
               jobs.c.attempts == sa.bindparam("p_number"), jobs.c.worker_id == sa.bindparam("p_worker_id"))
        .values(state=_job_state_after(outcome), failures=jobs.c.failures + (1 if failed else 0),
                exit_code=sa.bindparam("p_exit_code"), signal=sa.bindparam("p_signal"), worker_id=None,
                updated_at=db_now(), ended_at=db_now())
        .returning(jobs.c.state)
    )
    close_attempt = (
        attempts.update()
        .where(attempts.c.id == sa.bindparam("p_attempt_id"), attempts.c.state == AttemptState.RUNNING.value)
        .values(state=outcome.value, ended_at=db_now(), exit_code=sa.bindparam("p_exit_code"),
                signal=sa.bindparam("p_signal"), reason=sa.bindparam("p_reason"),
                pid=sa.func.coalesce(attempts.c.pid, sa.bindparam("p_pid", type_=sa.Integer)))
    )
    return move_job, close_attempt


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
    db: Database, job: ClaimedJob, worker_id: int, outcome: AttemptState, *,
    exit_code: int | None = None, signal: int | None = None, reason: str | None = None, pid: int | None = None,
) -> JobState | None:
    """Record how an attempt ended and move its job on. Exactly once: None if the job was no longer ours."""
    return record_finished(db, Finished(job, outcome, exit_code, signal, reason, pid), worker_id)


def record_finished(db: Database, finished: Finished, worker_id: int) -> JobState | None:
    """finish_attempt() for an attempt whose end is already a Finished."""
    return db.run_on_driver(lambda tx: _finish(tx, finished, worker_id))


def _finish(tx, f: Finished, worker_id: int) -> JobState | None:
    move_job, close_attempt = _finish_statements(f.outcome)
    # Bind names must not be column names: SQLAlchemy would add those to the SET clause.
    params = {"p_job_id": f.job.job_id, "p_number": f.job.number, "p_worker_id": worker_id, "p_attempt_id": f.job.attempt_id,
              "p_exit_code": f.exit_code, "p_signal": f.signal, "p_reason": f.reason, "p_pid": f.pid}
    moved = tx.first(move_job, params)
    if moved is None:
        return None
    tx.execute(close_attempt, params)
    return JobState(moved[0])


# --- lost workers --------------------------------------------------------------------------------


@dataclass
class LostWorker:
    id: int
    host: str
    pid: int
    why: str


def find_dead_workers(db: Database, lease: float = DEFAULT_LEASE_SECONDS) -> list[LostWorker]:
    """Workers not stopped cleanly that are gone: on this host by PID (and its start time), elsewhere by lease."""
    import psutil

    host, this_boot = socket.gethostname(), boot_id()
    expired = (workers.c.heartbeat_at < db_ago(lease)).label("expired")
    rows = db.run(
        lambda conn: conn.execute(sa.select(workers, expired).where(workers.c.stopped_at.is_(None))).mappings().all(),
        write=False,
    )
    dead = []
    for w in rows:
        if w["host"] != host:
            if w["expired"]:
                dead.append(LostWorker(w["id"], w["host"], w["pid"], f"no heartbeat for {lease:.0f}s"))
            continue
        if w["boot_id"] and this_boot and w["boot_id"] != this_boot:
            dead.append(LostWorker(w["id"], w["host"], w["pid"], "its host rebooted"))
            continue
        started = process_start_time(w["pid"])
        if started is None or (w["pid_started"] is not None and abs(started - w["pid_started"]) > 1.0):
            dead.append(LostWorker(w["id"], w["host"], w["pid"], f"process {w['pid']} is gone"))
            continue
        if w["expired"]:
            # Alive but silent past the lease: stopped (SIGSTOP) or hung. Kill it, or its jobs would be stuck.
            try:
                proc = psutil.Process(w["pid"])
                proc.kill()
                proc.wait(5)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass
            dead.append(LostWorker(w["id"], w["host"], w["pid"], f"hung for over {lease:.0f}s, killed"))
    return dead


def attempt_states(db: Database, attempt_ids: list[int]) -> dict[int, str]:
    stmt = sa.select(attempts.c.id, attempts.c.state).where(attempts.c.id.in_(attempt_ids))
    return db.run(lambda conn: dict(conn.execute(stmt).all()), write=False)


def running_attempts_of(db: Database, worker_ids: list[int]) -> list[dict]:
    stmt = sa.select(attempts).where(attempts.c.worker_id.in_(worker_ids), attempts.c.state == AttemptState.RUNNING.value)
    return db.run(lambda conn: [dict(r) for r in conn.execute(stmt).mappings()], write=False)


def requeue_jobs_of_dead_worker(db: Database, worker: LostWorker) -> list[int]:
    """Mark the worker stopped, its running attempts lost, and put its jobs back in the queue: one transaction.

    The caller has already killed the attempts' processes when they ran on this host.
    """

    def _requeue(conn) -> list[int]:
        taken = conn.execute(
            workers.update().where(workers.c.id == worker.id, workers.c.stopped_at.is_(None)).values(stopped_at=db_now())
        ).rowcount
        if not taken:
            return []  # another reaper got there first
        conn.execute(
            attempts.update().where(attempts.c.worker_id == worker.id, attempts.c.state == AttemptState.RUNNING.value)
            .values(state=AttemptState.LOST.value, ended_at=db_now(), reason=f"worker {worker.id} lost: {worker.why}")
        )
        rows = conn.execute(
            jobs.update().where(jobs.c.worker_id == worker.id, jobs.c.state == JobState.RUNNING.value)
            .values(state=JobState.QUEUED.value, worker_id=None, updated_at=db_now())
            .returning(jobs.c.id)
        )
        return [r.id for r in rows]

    return db.run(_requeue)


# --- control ---------------------------------------------------------------------------------------


def select_job_ids(conn, run: str | None, job_ids: list[int] | None, states: Iterable[str]) -> list[int]:
    stmt = sa.select(jobs.c.id).where(jobs.c.state.in_(list(states)))
    if run is not None:
        stmt = stmt.where(jobs.c.run_id == find_run(conn, run)["id"])
    if job_ids:
        known = set(conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(job_ids))).scalars())
        unknown = sorted(set(job_ids) - known)
        if unknown:
            raise UserError(f"no job with id {', '.join(map(str, unknown))}; `jq list` shows the ids")
        stmt = stmt.where(jobs.c.id.in_(job_ids))
    return list(conn.execute(stmt).scalars())


def cancel_jobs(db: Database, run: str | None = None, job_ids: list[int] | None = None) -> tuple[int, list[dict]]:
    """Cancel queued and running jobs. Returns (how many, the running attempts whose processes must stop)."""

    def _cancel(conn):
        ids = select_job_ids(conn, run, job_ids, [JobState.QUEUED.value, JobState.RUNNING.value])
        if not ids:
            return 0, []
        running = [dict(r) for r in conn.execute(
            sa.select(attempts).where(attempts.c.job_id.in_(ids), attempts.c.state == AttemptState.RUNNING.value)
        ).mappings()]
        conn.execute(
            attempts.update().where(attempts.c.job_id.in_(ids), attempts.c.state == AttemptState.RUNNING.value)
            .values(state=AttemptState.CANCELLED.value, ended_at=db_now(), reason="cancelled by jq cancel")
        )
        conn.execute(
            jobs.update().where(jobs.c.id.in_(ids))
            .values(state=JobState.CANCELLED.value, worker_id=None, updated_at=db_now(), ended_at=db_now())
        )
        return len(ids), running

    return db.run(_cancel)


def retry_jobs(db: Database, run: str | None = None, job_ids: list[int] | None = None, failed_only: bool = False) -> int:
    """Put failed (and, unless failed_only, timed-out and cancelled) jobs back in the queue."""
    states = [JobState.FAILED.value] if failed_only else [JobState.FAILED.value, JobState.TIMEOUT.value, JobState.CANCELLED.value]

    def _retry(conn):
        ids = select_job_ids(conn, run, job_ids, states)
        if ids:
            conn.execute(jobs.update().where(jobs.c.id.in_(ids)).values(state=JobState.QUEUED.value, failures=0, updated_at=db_now()))
        return len(ids)

    return db.run(_retry)


def record_submission(db: Database, **values) -> int:
    values.setdefault("submitted_at", utcnow())
    return db.run(lambda conn: conn.execute(submissions.insert().values(**values).returning(submissions.c.id)).scalar_one())


def run_submissions(db: Database, run_id: int, backend: str | None = None) -> list[dict]:
    stmt = sa.select(submissions).where(submissions.c.run_id == run_id).order_by(submissions.c.id)
    if backend:
        stmt = stmt.where(submissions.c.backend == backend)
    return db.run(lambda conn: [dict(r) for r in conn.execute(stmt).mappings()], write=False)


def update_submission(db: Database, submission_id: int, **values) -> None:
    db.run(lambda conn: conn.execute(submissions.update().where(submissions.c.id == submission_id).values(**values)))
