"""`jq launch`, `jq resume`, `jq cancel`: enqueue, start the backend's workers, and pick up after a crash."""

from __future__ import annotations

import signal
import socket

from jobqueue import queue
from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.processes import all_job_processes, kill_processes, signal_group
from jobqueue.service import SweepPlan, enqueue_plan
from jobqueue.states import AttemptState, JobState

BACKENDS = ("processes", "slurm", "ngc")

# Launch settings a later `jq resume` reuses, with their defaults (Sample Factory's, but pause_between 0).
LAUNCH_DEFAULTS = {
    "backend": "processes", "num_gpus": 1, "gpus": None, "experiments_per_gpu": -1, "max_parallel": 4,
    "pause_between": 0, "timeout": None, "max_attempts": 1,
}


def merged_settings(recorded: dict | None, overrides: dict) -> dict:
    """Defaults < what the sweep file and the last launch recorded < flags given now."""
    settings = {**LAUNCH_DEFAULTS, **(recorded or {})}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def launch(db_arg: str | None, plan: SweepPlan, overrides: dict, progress: bool = True) -> int:
    """Check the backend's settings, then (and only then) open the DB, enqueue and start the workers."""
    from jobqueue.db import open_db, resolve_url

    if overrides.get("backend") and overrides["backend"] not in BACKENDS:
        raise UserError(f"--backend {overrides['backend']}: unknown; use one of {', '.join(BACKENDS)}")
    settings = merged_settings(plan.loaded.run.launch_defaults, overrides)
    backend = settings["backend"]
    _check_backend_settings(resolve_url(db_arg), settings)
    db = open_db(db_arg)
    result = enqueue_plan(db, plan, settings={}, max_attempts=settings.get("max_attempts"))
    queue.update_run_settings(db, result.run_id, _recordable(settings))
    queue.set_job_limits(db, result.run_id, timeout=settings.get("timeout"), max_attempts=settings.get("max_attempts"))
    print(f"{result.run_name}: {result.added} new jobs enqueued, {result.existing} already there; backend {backend}", flush=True)
    run = queue.get_run(db, result.run_name)
    return start_workers(db, run, settings, progress)


def _check_backend_settings(db_url: str, settings: dict) -> None:
    if settings["backend"] == "slurm":
        from jobqueue.backends import slurm

        slurm.check_settings(settings)
    elif settings["backend"] == "ngc":
        from jobqueue.backends import ngc

        ngc.check_settings(db_url, settings)


def _recordable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if not k.endswith("_print_only")}


def start_workers(db: Database, run: dict, settings: dict, progress: bool = True) -> int:
    backend = settings["backend"]
    if backend == "processes":
        from jobqueue.backends.processes import run_local

        result = run_local(db, run, settings, progress)
        if result.stop_signal is not None:
            print(f"{run['name']}: stopped; unfinished jobs are queued again. `jq resume {run['name']}` carries on.")
            return result.exit_code
        return 1 if _has_failures(db, run["name"]) else 0
    if backend == "slurm":
        from jobqueue.backends import slurm

        return slurm.launch(db, run, settings)
    from jobqueue.backends import ngc

    return ngc.launch(db, run, settings)


def _has_failures(db: Database, run: str) -> bool:
    counts = {state: n for _, state, n in queue.status_counts(db, run)}
    return bool(counts.get(JobState.FAILED.value) or counts.get(JobState.TIMEOUT.value))


def resume(db: Database, run_name: str | None, *, failed: bool = False, requeue_only: bool = False,
           overrides: dict | None = None, progress: bool = True, lease: float = queue.DEFAULT_LEASE_SECONDS) -> int:
    """Requeue what was lost, kill this host's orphans, then start the run's workers again."""
    from jobqueue.worker import reap

    if run_name is not None:
        queue.get_run(db, run_name)  # a clear error for an unknown run, before anything changes
    requeued = reap(db, lease, say=lambda m: print(m, flush=True))
    orphans = kill_orphans(db)
    print(f"resume: {len(requeued)} lost jobs requeued, {orphans} orphaned job processes killed on {socket.gethostname()}")
    if failed:
        n = queue.retry_jobs(db, run_name, failed_only=False)
        print(f"resume: {n} failed jobs queued again")
    if requeue_only:
        return 0
    runs = [queue.get_run(db, run_name)] if run_name else _runs_with_queued_jobs(db)
    if not runs:
        print("resume: nothing is queued; all runs are finished")
        return 0
    code = 0
    for run in runs:
        settings = merged_settings(run.get("settings"), overrides or {})
        queued = {state: n for _, state, n in queue.status_counts(db, run["name"])}.get(JobState.QUEUED.value, 0)
        if not queued and settings["backend"] == "processes":  # the Slurm and NGC backends say for themselves
            print(f"resume: {run['name']}: nothing queued")
            continue
        _check_backend_settings(db.url, settings)
        print(f"resume: {run['name']}: starting workers ({settings['backend']})", flush=True)
        code = max(code, start_workers(db, run, settings, progress))
    return code


def _runs_with_queued_jobs(db: Database) -> list[dict]:
    names = []
    for name, state, n in queue.status_counts(db):
        if state == JobState.QUEUED.value and n and name not in names:
            names.append(name)
    return [queue.get_run(db, name) for name in names]


def kill_orphans(db: Database) -> int:
    """Kill this host's job processes whose attempt is over (lost, interrupted, finished) or unknown."""
    found = all_job_processes(db.url)
    if not found:
        return 0
    running = queue.attempt_states(db, list(found))
    orphans = [p for attempt_id, procs in found.items() if running.get(attempt_id) != AttemptState.RUNNING.value for p in procs]
    return kill_processes(orphans)


def cancel(db: Database, targets: list[str], grace: float = 5.0) -> str:
    """Cancel a run (by name) or jobs (by id); stop their processes on this host and their backend jobs."""
    run_name, job_ids = _parse_targets(db, targets)
    count, running = queue.cancel_jobs(db, run_name, job_ids)
    here = socket.gethostname()
    for attempt in running:
        if attempt["host"] == here and attempt["pid"]:
            signal_group(attempt["pid"], signal.SIGTERM)  # the worker records it and KILLs after its grace
    lines = [f"cancelled {count} jobs" + (f" ({len(running)} were running)" if running else "")]
    if run_name is not None:
        from jobqueue.backends import ngc, slurm

        run = queue.get_run(db, run_name)
        lines += slurm.cancel_run(db, run) + ngc.cancel_run(db, run)
    return "\n".join(lines)


def _parse_targets(db: Database, targets: list[str]) -> tuple[str | None, list[int] | None]:
    if not targets:
        only = queue.only_run(db)
        if only is None:
            raise UserError("name a run or job ids to cancel, e.g. `jq cancel quickstart` or `jq cancel 3 4`")
        return only["name"], None
    if all(t.isdigit() for t in targets):
        return None, [int(t) for t in targets]
    if len(targets) == 1:
        return targets[0], None
    raise UserError("give either one run name or job ids (numbers), not both")
