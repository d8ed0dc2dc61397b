"""`jq cancel` and `jq retry`: move a run's (or some jobs') jobs out of the queue or back into it."""

from __future__ import annotations

import signal
import socket

from jobqueue import queue
from jobqueue.backends.base import get_backend
from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.processes import signal_group


def cancel(db: Database, targets: list[str]) -> str:
    """Cancel a run (by name) or jobs (by id); stop their processes on this host and their backend jobs."""
    run_name, job_ids = parse_targets(db, targets, "cancel")
    count, running = queue.cancel_jobs(db, run_name, job_ids)
    here = socket.gethostname()
    for attempt in running:
        if attempt["host"] == here and attempt["pid"]:
            signal_group(attempt["pid"], signal.SIGTERM)  # the worker records it and KILLs after its grace
    lines = [f"cancelled {count} jobs" + (f" ({len(running)} were running)" if running else "")]
    if run_name is not None:
        run = queue.get_run(db, run_name)
        for backend in queue.submission_backends(db, run["id"]):
            lines += get_backend(backend).cancel(db, run)
    return "\n".join(lines)


def retry(db: Database, targets: list[str], failed_only: bool = False) -> int:
    """Put failed (and, unless failed_only, timed-out and cancelled) jobs back in the queue; how many."""
    run_name, job_ids = parse_targets(db, targets, "retry") if targets else (None, None)
    return queue.retry_jobs(db, run_name, job_ids, failed_only=failed_only)


def parse_targets(db: Database, targets: list[str], command: str) -> tuple[str | None, list[int] | None]:
    """A run name or job ids; none at all names the DB's only run."""
    if not targets:
        only = queue.only_run(db)
        if only is None:
            raise UserError(f"name a run or job ids to {command}, e.g. `jq {command} quickstart` or `jq {command} 3 4`")
        return only["name"], None
    if all(t.isdigit() for t in targets):
        return None, [int(t) for t in targets]
    if len(targets) == 1:
        return targets[0], None
    raise UserError("give either one run name or job ids (numbers), not both")
