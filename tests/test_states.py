"""The state machine, walked on SQLite and PostgreSQL: each queue operation is tried on a job in every state (and
on an attempt in every state), and moves it exactly when states.JOB_MOVES / ATTEMPT_MOVES allow, leaving the
row as it was otherwise. Then two connections on PostgreSQL: `jq cancel` cannot overwrite a job that has just
succeeded."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from jobqueue import queue, sql
from jobqueue.db import Database, Transaction, open_db
from jobqueue.states import ATTEMPT_MOVES, JOB_MOVES, AttemptState, JobState, Operation
from jobqueue.sweep import JobSpec

_runs = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path_factory):
    """One DB of each kind for the whole module: each case adds a run of its own."""
    if request.param == "sqlite":
        url = str(tmp_path_factory.mktemp("states") / "jobqueue.db")
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"jq_states_{os.getpid()}")
    database = open_db(url)
    yield database
    database.dispose()


# A job's attempt, as it is left when the job reaches each state.
ATTEMPT_OF = {
    JobState.QUEUED: AttemptState.INTERRUPTED,
    JobState.RUNNING: AttemptState.RUNNING,
    JobState.SUCCEEDED: AttemptState.SUCCEEDED,
    JobState.FAILED: AttemptState.FAILED,
    JobState.TIMEOUT: AttemptState.TIMEOUT,
    JobState.CANCELLED: AttemptState.CANCELLED,
}


def running_job(db: Database, max_attempts: int = 1) -> tuple[queue.ClaimedJob, queue.WorkerInfo]:
    """A job of a run of its own, claimed by a worker of its own."""
    spec = JobSpec(name="j", experiment="e", params={}, argv=["true"], cmd="true", root_dir="r", experiment_dir="r/e")
    run = queue.enqueue(
        db, f"run{next(_runs)}", [spec], sweep="s", train_dir="t", cwd="/tmp", max_attempts=max_attempts
    )
    worker = queue.register_worker(db, slots=1, gpus=None, backend="processes", run_id=run.run_id)
    job = queue.claim_next_job(db, worker, slot=0, gpus=None, run_id=run.run_id)
    assert job is not None
    return job, worker


def put(db: Database, job: queue.ClaimedJob, state: JobState, attempt: AttemptState) -> None:
    """Set the states directly. The job keeps its worker and attempt number, so only its state can stop a move."""
    db.transact(
        lambda tx: (
            tx.execute("UPDATE jobs SET state = :state WHERE id = :id", {"state": state.value, "id": job.job_id}),
            tx.execute(
                "UPDATE attempts SET state = :state WHERE id = :id", {"state": attempt.value, "id": job.attempt_id}
            ),
        )
    )


def rows(db: Database, job: queue.ClaimedJob) -> tuple[dict, list[dict]]:
    """The job's row and its attempts' rows, every column."""
    return db.transact(
        lambda tx: (
            tx.dicts("SELECT * FROM jobs WHERE id = :id", {"id": job.job_id})[0],
            tx.dicts("SELECT * FROM attempts WHERE job_id = :id ORDER BY id", {"id": job.job_id}),
        ),
        write=False,
    )


@dataclass(frozen=True)
class Op:
    """One queue operation on one job; `run` calls it and says whether the operation reported moving the job."""

    name: str
    operation: Operation
    target: JobState
    attempt_target: AttemptState | None  # what the running attempt of a job it moves becomes
    run: Callable[[Database, queue.ClaimedJob, queue.WorkerInfo], bool]
    max_attempts: int = 1
    only_from: tuple[JobState, ...] | None = None  # `jq retry --failed` narrows what the table allows

    def moves_job(self, old: JobState) -> bool:
        allowed = self.operation in JOB_MOVES.get((old, self.target), ())
        return allowed and (self.only_from is None or old in self.only_from)

    def moves_attempt(self, old: AttemptState) -> bool:
        return self.attempt_target is not None and self.operation in ATTEMPT_MOVES.get((old, self.attempt_target), ())

    def __str__(self) -> str:
        return self.name


def claim(db, job, worker) -> bool:
    claimed = queue.claim_next_job(db, worker, slot=0, gpus=None, job_id=job.job_id)
    return claimed is not None and claimed.job_id == job.job_id


def finish(outcome: AttemptState, target: JobState):
    def run(db, job, worker) -> bool:
        state = queue.finish_attempt(db, job, worker.id, outcome, exit_code=0)
        assert state in (None, target)
        return state is not None

    return run


def requeue(db, job, worker) -> bool:
    requeued = queue.requeue_jobs_of_dead_worker(db, queue.LostWorker(worker.id, worker.host, worker.pid, "test"))
    assert requeued in ([], [job.job_id])
    return requeued == [job.job_id]


def cancel(db, job, worker) -> bool:
    count, attempts = queue.cancel_jobs(db, job_ids=[job.job_id])
    assert count in (0, 1) and all(a["job_id"] == job.job_id for a in attempts)
    return count == 1


def retry(failed_only: bool):
    def run(db, job, worker) -> bool:
        return queue.retry_jobs(db, job_ids=[job.job_id], failed_only=failed_only) == 1

    return run


F = Operation.FINISH
OPS = [
    Op("claim", Operation.CLAIM, JobState.RUNNING, None, claim),
    Op(
        "finish-succeeded",
        F,
        JobState.SUCCEEDED,
        AttemptState.SUCCEEDED,
        finish(AttemptState.SUCCEEDED, JobState.SUCCEEDED),
    ),
    Op("finish-failed", F, JobState.FAILED, AttemptState.FAILED, finish(AttemptState.FAILED, JobState.FAILED)),
    Op(
        "finish-failed-attempts-left",
        F,
        JobState.QUEUED,
        AttemptState.FAILED,
        finish(AttemptState.FAILED, JobState.QUEUED),
        max_attempts=2,
    ),
    Op("finish-timeout", F, JobState.TIMEOUT, AttemptState.TIMEOUT, finish(AttemptState.TIMEOUT, JobState.TIMEOUT)),
    Op(
        "finish-timeout-attempts-left",
        F,
        JobState.QUEUED,
        AttemptState.TIMEOUT,
        finish(AttemptState.TIMEOUT, JobState.QUEUED),
        max_attempts=3,
    ),
    Op(
        "finish-interrupted",
        F,
        JobState.QUEUED,
        AttemptState.INTERRUPTED,
        finish(AttemptState.INTERRUPTED, JobState.QUEUED),
    ),
    Op(
        "finish-cancelled",
        F,
        JobState.CANCELLED,
        AttemptState.CANCELLED,
        finish(AttemptState.CANCELLED, JobState.CANCELLED),
    ),
    Op("requeue-lost", Operation.REQUEUE_LOST, JobState.QUEUED, AttemptState.LOST, requeue),
    Op("cancel", Operation.CANCEL, JobState.CANCELLED, AttemptState.CANCELLED, cancel),
    Op("retry", Operation.RETRY, JobState.QUEUED, None, retry(failed_only=False)),
    Op(
        "retry-failed-only",
        Operation.RETRY,
        JobState.QUEUED,
        None,
        retry(failed_only=True),
        only_from=(JobState.FAILED,),
    ),
]


@pytest.mark.parametrize("op", OPS, ids=str)
@pytest.mark.parametrize("old", list(JobState), ids=str)
def test_each_operation_moves_a_job_exactly_when_the_table_allows(db, op, old):
    job, worker = running_job(db, op.max_attempts)
    put(db, job, old, ATTEMPT_OF[old])
    job_before, attempts_before = rows(db, job)

    reported = op.run(db, job, worker)

    job_after, attempts_after = rows(db, job)
    if not op.moves_job(old):
        assert not reported, f"{op} reported moving a {old} job"
        assert (job_after, attempts_after) == (job_before, attempts_before), f"{op} changed a {old} job"
        return
    assert reported, f"{op} did not report moving a {old} job"
    assert job_after["state"] == op.target
    (attempt_before,), old_attempt = attempts_before, attempts_after[0]
    if op.moves_attempt(AttemptState(attempt_before["state"])):
        assert old_attempt["state"] == op.attempt_target
    else:
        assert old_attempt == attempt_before
    if op.operation == Operation.CLAIM:  # a new attempt, running
        assert [a["state"] for a in attempts_after[1:]] == [AttemptState.RUNNING] and job_after["attempts"] == 2
    else:
        assert len(attempts_after) == 1


ATTEMPT_OPS = [op for op in OPS if op.attempt_target is not None]


@pytest.mark.parametrize("op", ATTEMPT_OPS, ids=str)
@pytest.mark.parametrize("old", list(AttemptState), ids=str)
def test_each_operation_ends_an_attempt_only_while_it_runs(db, op, old):
    """The job is running (so it moves); its attempt is in each state, and only a running one may end."""
    job, worker = running_job(db, op.max_attempts)
    put(db, job, JobState.RUNNING, old)
    _, (attempt_before,) = rows(db, job)

    assert op.run(db, job, worker), f"{op} did not move the running job"

    job_after, (attempt_after,) = rows(db, job)
    assert job_after["state"] == op.target
    if op.moves_attempt(old):
        assert attempt_after["state"] == op.attempt_target and attempt_after["ended_at"] is not None
    else:
        assert attempt_after == attempt_before, f"{op} changed a {old} attempt"


def test_the_walks_cover_every_move_in_the_tables_and_the_tables_keep_their_rules():
    in_table = {(old, new, o) for (old, new), ops in JOB_MOVES.items() for o in ops}
    walked = {(old, op.target, op.operation) for op in OPS for old in JobState if op.moves_job(old)}
    assert walked == in_table
    in_table = {(old, new, o) for (old, new), ops in ATTEMPT_MOVES.items() for o in ops}
    walked = {
        (old, op.attempt_target, op.operation) for op in ATTEMPT_OPS for old in AttemptState if op.moves_attempt(old)
    }
    assert walked == in_table
    # A succeeded job is done for good; an attempt only ever moves once, from running to how it ended.
    assert not [new for (old, new) in JOB_MOVES if old == JobState.SUCCEEDED]
    assert {old for old, _ in ATTEMPT_MOVES} == {AttemptState.RUNNING}
    assert all(callable(getattr(queue, o.value, None)) for o in Operation)


def _waiting_on_a_lock(db: Database) -> int:
    return db.transact(
        lambda tx: tx.first(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ),
        write=False,
    )[0]


def while_another_transaction_holds(
    db: Database, hold: Callable[[Transaction], object], operation: Callable[[], object]
):
    """hold(tx) on a connection of its own, uncommitted; operation() in a thread until it waits for that
    transaction's row locks; then the commit, and what operation() returns."""
    first = db.engine.raw_connection()
    pool = ThreadPoolExecutor(1)
    try:
        hold(Transaction(sql.POSTGRESQL, first.cursor()))
        waiting = pool.submit(operation)
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(db):
            assert not waiting.done(), f"it did not wait for the other transaction: {waiting.result()}"
            assert time.monotonic() < deadline, "it never waited for the other transaction"
            time.sleep(0.01)
        first.commit()
        return waiting.result(timeout=10)
    finally:
        first.close()  # rolls back what is not committed, which lets the thread go
        pool.shutdown()


# SQLite lets one transaction write at a time: there, nothing can move a row between a read and an UPDATE.
only_postgres = pytest.mark.parametrize("db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@only_postgres
def test_cancel_cannot_overwrite_a_job_that_has_just_succeeded(db):
    """A worker finishes the attempt as succeeded and has not committed yet when `jq cancel` comes: cancel has
    read the job as running, waits for its row, and on the commit finds it succeeded and leaves it be."""
    job, worker = running_job(db)
    finished = queue.Finished(job, AttemptState.SUCCEEDED, exit_code=0)
    cancelled = while_another_transaction_holds(
        db,
        lambda tx: queue._finish(tx, finished, worker.id),  # finish_attempt's own statements
        lambda: queue.cancel_jobs(db, job_ids=[job.job_id]),
    )
    assert cancelled == (0, [])
    job_after, (attempt_after,) = rows(db, job)
    assert (job_after["state"], attempt_after["state"]) == (JobState.SUCCEEDED, AttemptState.SUCCEEDED)


@only_postgres
def test_two_retries_at_once_retry_a_failed_job_once(db):
    """The second `jq retry` read the job as failed, but the first has put it back in the queue by the time its
    UPDATE runs: it counts nothing (and would not send back a job a worker had claimed meanwhile)."""
    job, worker = running_job(db)
    assert queue.finish_attempt(db, job, worker.id, AttemptState.FAILED, exit_code=1) == JobState.FAILED
    retried = while_another_transaction_holds(
        db,
        lambda tx: tx.execute(
            "UPDATE jobs SET state = :queued WHERE id = :id", {"queued": JobState.QUEUED.value, "id": job.job_id}
        ),
        lambda: queue.retry_jobs(db, job_ids=[job.job_id]),
    )
    assert retried == 0
    assert rows(db, job)[0]["state"] == JobState.QUEUED


def test_one_transaction_records_several_ends_each_once_and_claims_for_their_slots(db):
    """The worker's loop records the jobs that ended together and claims for their slots in one transaction
    (queue.finish_then_claim). Each end is recorded once: one no longer the worker's (cancelled meanwhile) is refused
    without holding back the others, and the same ends sent again change nothing. The ends come first: a failed job
    with an attempt left is back in the queue, oldest first, for a claim of the same transaction; the claims stop
    when the queue is empty."""
    specs = [
        JobSpec(name=f"j{i}", experiment="e", params={}, argv=["true"], cmd="true", root_dir="r", experiment_dir="r/e")
        for i in range(4)
    ]
    run = queue.enqueue(db, f"run{next(_runs)}", specs, sweep="s", train_dir="t", cwd="/tmp", max_attempts=2)
    worker = queue.register_worker(db, slots=3, gpus=None, backend="processes", run_id=run.run_id)
    slots = [(0, None), (1, None), (2, "1")]
    states, (a, b, c) = queue.finish_then_claim(db, [], worker, slots, run_id=run.run_id)
    assert states == [] and [j.name for j in (a, b, c)] == ["j0", "j1", "j2"]
    opened = [rows(db, job)[1][0] for job in (a, b, c)]  # each slot's GPU and log, where its job's attempt says
    assert [(r["slot"], r["gpus"], r["id"]) for r in opened] == [
        (0, None, a.attempt_id),
        (1, None, b.attempt_id),
        (2, "1", c.attempt_id),
    ]
    assert (
        [r["log_path"] for r in opened]
        == [j.log_path for j in (a, b, c)]
        == [f"/tmp/r/e/jq_logs/j{i}.attempt-1.log" for i in range(3)]
    )
    queue.cancel_jobs(db, job_ids=[c.job_id])
    ends = [
        queue.Finished(a, AttemptState.SUCCEEDED, exit_code=0, pid=101),
        queue.Finished(b, AttemptState.FAILED, exit_code=1, pid=102),
        queue.Finished(c, AttemptState.SUCCEEDED, exit_code=0, pid=103),
    ]
    states, claimed = queue.finish_then_claim(db, ends, worker, slots, run_id=run.run_id)
    assert states == [JobState.SUCCEEDED, JobState.QUEUED, None]
    assert [(j.name, j.number) for j in claimed] == [("j1", 2), ("j3", 1)]  # and nothing for the third slot
    assert queue.finish_then_claim(db, ends, worker, [], run_id=run.run_id) == ([None, None, None], [])
    ended = {job.name: [(r["number"], r["state"], r["pid"]) for r in rows(db, job)[1]] for job in (a, b, c)}
    assert ended == {
        "j0": [(1, AttemptState.SUCCEEDED, 101)],
        "j1": [(1, AttemptState.FAILED, 102), (2, AttemptState.RUNNING, None)],
        "j2": [(1, AttemptState.CANCELLED, None)],
    }
    assert [r["slot"] for r in rows(db, claimed[0])[1]] == [1, 0]  # the second attempt went to the first free slot
