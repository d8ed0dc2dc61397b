"""Finding what died: requeue the jobs of lost workers and kill the job processes they left on this host.

Called by every worker now and then, and by `jq resume`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from jobqueue import queue
from jobqueue.db import Database
from jobqueue.processes import all_job_processes, attempt_processes, kill_processes
from jobqueue.states import AttemptState


@dataclass
class Reaped:
    requeued: list[int] = field(default_factory=list)  # jobs put back in the queue
    killed: int = 0  # job processes of dead workers killed on this host


def reap(db: Database, lease: float, say: Callable[[str], None] | None = None) -> Reaped:
    """Requeue the jobs of dead workers, after killing whatever they left running on this host."""
    reaped = Reaped()
    dead = queue.find_dead_workers(db, lease)
    if not dead:
        return reaped
    local = [w for w in dead if w.host == socket.gethostname()]
    if local:
        attempt_ids = {a["id"] for a in queue.running_attempts_of(db, [w.id for w in local])}
        if attempt_ids:
            reaped.killed = kill_processes(attempt_processes(attempt_ids, db.url))
    for w in dead:
        jobs = queue.requeue_jobs_of_dead_worker(db, w)
        if jobs and say:
            say(f"worker {w.id} on {w.host} (pid {w.pid}) is lost ({w.why}): requeued jobs {', '.join(map(str, jobs))}")
        reaped.requeued += jobs
    return reaped


def kill_orphans(db: Database) -> int:
    """Kill this host's job processes whose attempt is over (lost, interrupted, finished) or unknown."""
    found = all_job_processes(db.url)
    if not found:
        return 0
    running = queue.attempt_states(db, list(found))
    orphans = [
        p for attempt_id, procs in found.items() if running.get(attempt_id) != AttemptState.RUNNING.value for p in procs
    ]
    return kill_processes(orphans)
