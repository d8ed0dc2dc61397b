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


def reap(
    db: Database, lease: float, say: Callable[[str], None] | None = None, in_contact_for: float | None = None
) -> Reaped:
    """Requeue the jobs of dead workers, after killing whatever they left running on this host.

    A worker silent for a lease is lost only to a reaper that has itself been in contact with the DB for a lease
    (in_contact_for, its DbContact's; None: a reaper that does not keep one, as `jq resume`): when the DB comes
    back from an outage every heartbeat is old at once, and the workers must not reap each other for it. Until
    then only workers whose process is gone from this host are found. docs/reliability.md has the reasoning."""
    reaped = Reaped()
    by_lease = in_contact_for is None or in_contact_for >= lease
    dead = queue.find_dead_workers(db, lease, by_lease=by_lease)
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
