"""Job and attempt states, and the moves between them: written down once here, in JOB_MOVES and ATTEMPT_MOVES.

queue.py makes every move, and each of its UPDATEs takes the states it may move a row from out of these tables
(`job_state_is`, `attempt_state_is`), so a row in any other state -- say a job that succeeded while `jq cancel`
was looking at it -- is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class AttemptState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"  # its worker was stopped (SIGTERM, preemption); the job went back to queued
    LOST = "lost"  # its worker died; the job was requeued by resume or a reaper
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


DISPLAY_ORDER = (
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.CANCELLED,
    JobState.RUNNING,
    JobState.QUEUED,
)
UNFINISHED = (JobState.QUEUED, JobState.RUNNING)


class Operation(str, Enum):
    """The queue functions that move jobs and attempts (named as in queue.py)."""

    CLAIM = "claim_next_job"
    FINISH = "finish_attempt"  # also finish_then_claim and record_finished, which share its statements
    REQUEUE_LOST = "requeue_jobs_of_dead_worker"
    CANCEL = "cancel_jobs"
    RETRY = "retry_jobs"


# Every move a job makes, and the operations that make it.
JOB_MOVES: dict[tuple[JobState, JobState], frozenset[Operation]] = {
    (JobState.QUEUED, JobState.RUNNING): frozenset({Operation.CLAIM}),
    (JobState.RUNNING, JobState.SUCCEEDED): frozenset({Operation.FINISH}),
    (JobState.RUNNING, JobState.FAILED): frozenset({Operation.FINISH}),
    (JobState.RUNNING, JobState.TIMEOUT): frozenset({Operation.FINISH}),
    # interrupted, or failed with attempts left; or its worker was lost
    (JobState.RUNNING, JobState.QUEUED): frozenset({Operation.FINISH, Operation.REQUEUE_LOST}),
    (JobState.RUNNING, JobState.CANCELLED): frozenset({Operation.FINISH, Operation.CANCEL}),
    (JobState.QUEUED, JobState.CANCELLED): frozenset({Operation.CANCEL}),
    (JobState.FAILED, JobState.QUEUED): frozenset({Operation.RETRY}),
    (JobState.TIMEOUT, JobState.QUEUED): frozenset({Operation.RETRY}),
    (JobState.CANCELLED, JobState.QUEUED): frozenset({Operation.RETRY}),
}

# An attempt is made running (by claim_next_job) and moves once, to how it ended.
ATTEMPT_MOVES: dict[tuple[AttemptState, AttemptState], frozenset[Operation]] = {
    (AttemptState.RUNNING, AttemptState.SUCCEEDED): frozenset({Operation.FINISH}),
    (AttemptState.RUNNING, AttemptState.FAILED): frozenset({Operation.FINISH}),
    (AttemptState.RUNNING, AttemptState.TIMEOUT): frozenset({Operation.FINISH}),
    (AttemptState.RUNNING, AttemptState.INTERRUPTED): frozenset({Operation.FINISH}),
    (AttemptState.RUNNING, AttemptState.CANCELLED): frozenset({Operation.FINISH, Operation.CANCEL}),
    (AttemptState.RUNNING, AttemptState.LOST): frozenset({Operation.REQUEUE_LOST}),
}


def from_states(moves: dict, operation: Operation, *targets: Enum) -> tuple:
    """The states from which `operation` may move a row to each one of `targets` (a statement whose new state is
    chosen as it runs, like finish_attempt's, names them all), in declaration order."""
    allowed = [{old for (old, new), ops in moves.items() if new == target and operation in ops} for target in targets]
    found = set.intersection(*allowed) if allowed else set()
    if not found:
        raise ValueError(f"{operation.value} moves nothing to {', '.join(t.value for t in targets)}")
    return tuple(state for state in type(next(iter(found))) if state in found)


def literal(state: JobState | AttemptState) -> str:
    """A state as an SQL string literal: state names are plain words, so quoting them is safe."""
    assert state.value.isidentifier(), state
    return f"'{state.value}'"


def state_in(column: str, states: Iterable[JobState | AttemptState]) -> str:
    """SQL that `column` holds one of `states`: `state = 'queued'`, `state IN ('failed', 'timeout')`."""
    listed = [literal(s) for s in states]
    if not listed:
        raise ValueError(f"no states for {column}")
    return f"{column} = {listed[0]}" if len(listed) == 1 else f"{column} IN ({', '.join(listed)})"


def job_state_is(operation: Operation, *targets: JobState, column: str = "state") -> str:
    """The WHERE term of an UPDATE of jobs by `operation` to `targets`: the job states JOB_MOVES allows it from."""
    return state_in(column, from_states(JOB_MOVES, operation, *targets))


def attempt_state_is(operation: Operation, *targets: AttemptState, column: str = "state") -> str:
    """The WHERE term of an UPDATE of attempts by `operation` to `targets`, from ATTEMPT_MOVES."""
    return state_in(column, from_states(ATTEMPT_MOVES, operation, *targets))
