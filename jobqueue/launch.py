"""`jq launch` and `jq resume`: enqueue a sweep, start its backend's workers, and pick up after a crash.

The settings in force come from jobqueue.settings; the backend that starts the workers from the registry in
jobqueue.backends.base. `jq cancel` and `jq retry` live in control.py, the reaper in reaper.py.
"""

from __future__ import annotations

import socket
from typing import Any, Mapping

from jobqueue import queue
from jobqueue.backends.base import get_backend
from jobqueue.db import Database
from jobqueue.reaper import kill_orphans, reap
from jobqueue.service import SweepPlan, enqueue_plan
from jobqueue.settings import FLAGS, LaunchSettings, Source, parse
from jobqueue.states import JobState


def launch(db_arg: str | None, plan: SweepPlan, flags: Mapping[str, Any], progress: bool = True) -> int:
    """Check the backend's settings, then (and only then) open the DB, enqueue and start the workers.

    A launch states its settings afresh: the sweep file's RunDescription keywords, then the flags given now."""
    from jobqueue.db import open_db, resolve_url

    settings = LaunchSettings.merge(plan.launch_settings, parse(flags, FLAGS))
    backend = get_backend(settings.backend)
    backend.check(resolve_url(db_arg), settings)
    db = open_db(db_arg)
    result = enqueue_plan(db, plan, max_attempts=settings.max_attempts)
    queue.update_run_settings(db, result.run_id, settings.to_stored())
    queue.set_job_limits(db, result.run_id, timeout=settings.timeout, max_attempts=settings.max_attempts)
    print(f"{result.run_name}: {result.added} new jobs enqueued, {result.existing} already there; backend {settings.backend}",
          flush=True)
    return backend.start(db, queue.get_run(db, result.run_name), settings, progress)


def recorded_settings(run: dict, flags: Mapping[str, Any] | None = None) -> LaunchSettings:
    """The settings a resume runs with: what the run's last launch recorded (or its sweep file's keywords, if it
    was only enqueued), then the flags given now."""
    return LaunchSettings.merge(parse(run.get("settings"), Source("recorded", run["name"])), parse(flags, FLAGS))


def resume(db: Database, run_name: str | None, *, failed: bool = False, requeue_only: bool = False,
           flags: Mapping[str, Any] | None = None, progress: bool = True, lease: float = queue.DEFAULT_LEASE_SECONDS) -> int:
    """Requeue what was lost, kill this host's orphans, then start the run's workers again."""
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
        settings = recorded_settings(run, flags)
        backend = get_backend(settings.backend)
        queued = {state: n for _, state, n in queue.status_counts(db, run["name"])}.get(JobState.QUEUED.value, 0)
        if not queued and not backend.reports_nothing_queued:
            print(f"resume: {run['name']}: nothing queued")
            continue
        backend.check(db.url, settings)
        print(f"resume: {run['name']}: starting workers ({settings.backend})", flush=True)
        code = max(code, backend.start(db, run, settings, progress))
    return code


def _runs_with_queued_jobs(db: Database) -> list[dict]:
    names = []
    for name, state, n in queue.status_counts(db):
        if state == JobState.QUEUED.value and n and name not in names:
            names.append(name)
    return [queue.get_run(db, name) for name in names]
