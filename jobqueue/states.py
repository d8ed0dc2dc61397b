"""Job and attempt states, and the moves between them (written down once; queue.py makes each move)."""

from __future__ import annotations

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


DISPLAY_ORDER = (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED, JobState.RUNNING, JobState.QUEUED)

# Every move a job makes, and the queue operation that makes it.
MOVES = {
    (JobState.QUEUED, JobState.RUNNING): "claim_next_job",
    (JobState.RUNNING, JobState.SUCCEEDED): "finish_attempt",
    (JobState.RUNNING, JobState.FAILED): "finish_attempt",
    (JobState.RUNNING, JobState.TIMEOUT): "finish_attempt",
    (JobState.RUNNING, JobState.QUEUED): "finish_attempt (interrupted, or failed with attempts left) / requeue_lost_jobs",
    (JobState.RUNNING, JobState.CANCELLED): "cancel_jobs",
    (JobState.QUEUED, JobState.CANCELLED): "cancel_jobs",
    (JobState.FAILED, JobState.QUEUED): "retry_jobs",
    (JobState.TIMEOUT, JobState.QUEUED): "retry_jobs",
    (JobState.CANCELLED, JobState.QUEUED): "retry_jobs",
}
