"""The local backend: run the run's jobs on this machine with Sample Factory's GPU semantics.

`--experiments-per-gpu -1` leaves CUDA_VISIBLE_DEVICES alone; K > 0 pins each job to the least busy
GPU with fewer than K jobs; `--max-parallel` caps the total. The worker runs in this process, so a
launch pays for one Python start-up, and Ctrl-C reaches it directly.
"""

from __future__ import annotations

from jobqueue.db import Database
from jobqueue.progress import ProgressView
from jobqueue.worker import Worker, WorkerResult, WorkerSettings


def gpu_list(settings: dict) -> list[str]:
    if settings.get("gpus"):
        return [g.strip() for g in str(settings["gpus"]).split(",") if g.strip()]
    return [str(i) for i in range(int(settings.get("num_gpus") or settings.get("use_gpus") or 1))]


def worker_settings(settings: dict, run_id: int, on_event=None) -> WorkerSettings:
    per_gpu = int(settings.get("experiments_per_gpu", -1))
    return WorkerSettings(
        slots=max(1, int(settings.get("max_parallel") or 4)),
        gpus=gpu_list(settings) if per_gpu > 0 else None,
        experiments_per_gpu=per_gpu,
        run_id=run_id,
        pause_between=float(settings.get("pause_between") or 0),
        grace=float(settings.get("grace", 30)),
        backend="processes",
        on_event=on_event,
    )


def run_local(db: Database, run: dict, settings: dict, progress: bool = True) -> WorkerResult:
    """Run every queued job of the run here, with a live progress view; returns what the worker did."""
    with ProgressView(db, run["name"], enabled=progress) as view:
        quiet_events = lambda message: view.say(message) if _worth_showing(message) else None  # noqa: E731
        result = Worker(db, worker_settings(settings, run["id"], on_event=quiet_events if progress else None)).run()
    return result


def _worth_showing(message: str) -> bool:
    return any(word in message for word in ("failed", "timeout", "lost", "stopping", "cancelled", "got SIG"))
