"""The local backend: run the run's jobs on this machine with Sample Factory's GPU semantics.

`--experiments-per-gpu -1` leaves CUDA_VISIBLE_DEVICES alone; K > 0 pins each job to the least busy
GPU with fewer than K jobs; `--max-parallel` caps the total. The worker runs in this process, so a
launch pays for one Python start-up, and Ctrl-C reaches it directly.
"""

from __future__ import annotations

from jobqueue import queue
from jobqueue.db import Database
from jobqueue.progress import ProgressView
from jobqueue.settings import LaunchSettings
from jobqueue.states import JobState
from jobqueue.worker import METRICS_EVERY, Worker, WorkerResult, WorkerSettings

DEFAULT_GRACE = 30.0


def worker_settings(settings: LaunchSettings, run_id: int, on_event=None) -> WorkerSettings:
    pinned = settings.experiments_per_gpu > 0
    return WorkerSettings(
        slots=settings.max_parallel,
        gpus=settings.gpu_list() if pinned else None,
        experiments_per_gpu=settings.experiments_per_gpu,
        run_id=run_id,
        pause_between=settings.pause_between,
        grace=DEFAULT_GRACE if settings.grace is None else settings.grace,
        metrics_every=METRICS_EVERY if settings.metrics_every is None else settings.metrics_every,
        lease=queue.DEFAULT_LEASE_SECONDS if settings.lease is None else settings.lease,
        backend="processes",
        on_event=on_event,
    )


def run_local(db: Database, run: dict, settings: LaunchSettings, progress: bool = True) -> WorkerResult:
    """Run every queued job of the run here, with a live progress view; returns what the worker did."""
    with ProgressView(db, run["name"], enabled=progress) as view:
        notable = lambda event: view.say(event.message, event.failed_job) if event.notable else None  # noqa: E731
        result = Worker(db, worker_settings(settings, run["id"], on_event=notable if progress else None)).run()
    return result


class ProcessesBackend:
    name = "processes"
    reports_nothing_queued = False

    def check(self, db_url: str, settings: LaunchSettings) -> None:
        pass

    def start(self, db: Database, run: dict, settings: LaunchSettings, progress: bool) -> int:
        result = run_local(db, run, settings, progress)
        if result.stop_signal is not None:
            print(f"{run['name']}: stopped; unfinished jobs are queued again. `jq resume {run['name']}` carries on.")
            return result.exit_code
        counts = {state: n for _, state, n in queue.status_counts(db, run["name"])}
        return 1 if counts.get(JobState.FAILED.value) or counts.get(JobState.TIMEOUT.value) else 0

    def live_states(self, submissions: list[dict]) -> dict[int, str]:
        return {}

    def cancel(self, db: Database, run: dict) -> list[str]:
        return []  # its jobs' processes are stopped by jq cancel itself, through their process groups


BACKEND = ProcessesBackend()
