"""`jq launch` and `jq resume`: enqueue a sweep, start its backend's workers, and pick up after a crash.

The settings in force come from jobqueue.settings; the backend that starts the workers from the registry in
jobqueue.backends.base. `jq cancel` and `jq retry` live in control.py, the reaper in reaper.py.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from jobqueue import queue
from jobqueue.backends.base import get_backend
from jobqueue.db import Database, DbContact
from jobqueue.reaper import kill_orphans, reap
from jobqueue.service import SweepPlan, enqueue_plan
from jobqueue.settings import FLAGS, LaunchSettings, Source, parse
from jobqueue.states import JobState


def launch(
    db_arg: str | None, plan: SweepPlan, flags: Mapping[str, Any], progress: bool = True, watch: bool = False
) -> int:
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
    print(
        f"{result.run_name}: {result.added} new jobs enqueued, {result.existing} already there; backend {settings.backend}",
        flush=True,
    )
    code = backend.start(db, queue.get_run(db, result.run_name), settings, progress)
    if (
        watch
        and code == 0
        and backend.reports_nothing_queued
        and not (settings.slurm.print_only or settings.ngc.print_only)
    ):
        return watch_run(db, result.run_name, progress=progress)
    return code


def recorded_settings(run: dict, flags: Mapping[str, Any] | None = None) -> LaunchSettings:
    """The settings a resume runs with: what the run's last launch recorded (or its sweep file's keywords, if it
    was only enqueued), then the flags given now."""
    return LaunchSettings.merge(parse(run.get("settings"), Source("recorded", run["name"])), parse(flags, FLAGS))


def resume(
    db: Database,
    run_name: str | None,
    *,
    failed: bool = False,
    requeue_only: bool = False,
    flags: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> int:
    """Requeue what was lost, kill this host's orphans, then start the run's workers again.

    Through a DB outage it waits, saying so in one line. Its reaper judges other hosts' workers by their heartbeats
    at once: a person runs it, and a worker silent for a lease has stopped its jobs by then (the fence, worker.py).
    The lease is --lease, else the run's recorded one, which its workers fence themselves by."""
    call = _outage_rider().call
    lease = (flags or {}).get("lease")
    if run_name is not None:
        run = call(lambda: queue.get_run(db, run_name))  # a clear error for an unknown run, before anything changes
        lease = recorded_settings(run, flags).lease  # --lease over the recorded one
    if lease is None:
        lease = queue.DEFAULT_LEASE_SECONDS
    reaped = call(lambda: reap(db, lease, say=lambda m: print(m, flush=True)))
    orphans = reaped.killed + call(lambda: kill_orphans(db))
    print(
        f"resume: {len(reaped.requeued)} lost jobs requeued, {orphans} orphaned job processes killed on {socket.gethostname()}"
    )
    if failed:
        n = call(lambda: queue.retry_jobs(db, run_name, failed_only=False))
        print(f"resume: {n} failed jobs queued again")
    if requeue_only:
        return 0
    runs = call(lambda: [queue.get_run(db, run_name)] if run_name else _runs_with_queued_jobs(db))
    if not runs:
        print("resume: nothing is queued; all runs are finished")
        return 0
    code = 0
    for run in runs:
        settings = recorded_settings(run, flags)
        backend = get_backend(settings.backend)
        counts = call(lambda: queue.status_counts(db, run["name"]))  # noqa: B023 - called here, in this iteration
        queued = {state: n for _, state, n in counts}.get(JobState.QUEUED.value, 0)
        if not queued and not backend.reports_nothing_queued:
            print(f"resume: {run['name']}: nothing queued")
            continue
        backend.check(db.url, settings)
        print(f"resume: {run['name']}: starting workers ({settings.backend})", flush=True)
        code = max(code, backend.start(db, run, settings, progress))
    return code


def _outage_rider() -> DbContact:
    """What `jq resume` and the watch of a run use to wait through a DB outage, telling it in one line each way."""
    return DbContact(lambda message: print(f"jq: {message}", file=sys.stderr, flush=True))


def _runs_with_queued_jobs(db: Database) -> list[dict]:
    names = []
    for name, state, n in queue.status_counts(db):
        if state == JobState.QUEUED.value and n and name not in names:
            names.append(name)
    return [queue.get_run(db, name) for name in names]


def watch_run(db: Database, run_name: str, *, interval: float = 2.0, progress: bool = True) -> int:
    """Show a run's progress, and its Slurm/NGC submissions' live states as they change, until no job is queued or
    running; for a run whose workers run elsewhere. 1 if a job failed or timed out, else 0."""
    from jobqueue.progress import ProgressView

    contact = _outage_rider()
    run = contact.call(lambda: queue.get_run(db, run_name))
    seen: dict = {}  # each submission's state by id; the counts of those of one job each by ("per-job", backend)
    counts: dict[str, int] = {}
    with ProgressView(db, run_name, enabled=progress, interval=min(interval, 0.5)) as view:
        say: Callable[[str], None] = view.say if progress else print
        while True:
            read, rows = contact.once(lambda: queue.status_counts(db, run_name))
            if read:
                counts = {state: n for _, state, n in rows or []}
                _, lines = contact.once(lambda: _submission_changes(db, run, seen))
                for line in lines or []:
                    say(line)
                if not counts.get(JobState.QUEUED.value) and not counts.get(JobState.RUNNING.value):
                    break
            time.sleep(interval)
    return 1 if counts.get(JobState.FAILED.value) or counts.get(JobState.TIMEOUT.value) else 0


def _submission_changes(db: Database, run: dict, seen: dict) -> list[str]:
    """A line for each of the run's submissions whose (live) state is new since the last call; those of one job
    each, beyond PER_JOB_LISTED of them, as their counts by state, when these change."""
    from jobqueue.report import per_job_line, too_many_to_list

    per_job = queue.per_job_submission_counts(db, run["id"])
    listed = not too_many_to_list(per_job)
    by_backend: dict[str, list[dict]] = {}
    for sub in queue.run_submissions(db, run["id"], per_job=listed):
        by_backend.setdefault(sub["backend"], []).append(sub)
    lines = []
    if not listed:
        for name, states in per_job.items():
            line = per_job_line(run["name"], name, states)
            if seen.get(("per-job", name)) != line:
                seen[("per-job", name)] = line
                lines.append(line)
    for name, subs in by_backend.items():
        live = get_backend(name).live_states(subs)
        for sub in subs:
            state = live.get(sub["id"], sub["state"])
            if seen.get(sub["id"]) != state:
                seen[sub["id"]] = state
                lines.append(f"{run['name']}: {name} submission {sub['external_id'] or '-'}: {state}")
    return lines


def detach(plan: SweepPlan, argv: list[str]) -> int:
    """Start this launch again (argv, without --detach) in a session of its own, with no terminal: a closed
    terminal or a logout cannot reach it. Its output goes to a log file in the run's directory."""
    import os
    import subprocess
    import sys

    log_path = os.path.abspath(os.path.join(plan.train_dir, plan.run_name, "jq_launch.log"))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobqueue", *argv, "--no-progress"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"{plan.run_name}: launched in the background (pid {proc.pid}); its output goes to {log_path}")
    print(f"follow it with: jq status {plan.run_name} --watch    stop it with: jq cancel {plan.run_name}")
    return 0
