"""Every run's jobs per state, kept current between polls without counting a big run's jobs at every poll.

Counting reads each run's whole part of ix_jobs_run_state_id: on a million jobs that takes far longer than a poll
may. Between full counts, a poll reads only what moved: a job changes state through its attempts (a claim opens
one, finishing closes it), so the jobs whose attempt was running last time and is not now, and the jobs of the
attempts opened since, are the ones to look at -- a few index and primary-key reads, whatever the size of the run.
A claim moves a job only from queued; any other job was counted as running. What no attempt records (`jq cancel`
of queued jobs, `jq retry`) shows at the next full count, which runs again once RECOUNT_SHARE times its own
cost has passed (at every poll on a small DB, within seconds on a big one), in a thread of its own.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

from jobqueue import sql
from jobqueue.report import STATES
from jobqueue.states import AttemptState, JobState, literal
from jobqueue.ui.readonly import ReadOnlyDB, Snapshot

RECOUNT_SHARE = 20  # a full count at most 1/RECOUNT_SHARE of the time
FRESH_FOR = 0.25  # seconds: polls closer together than this (several pages open) share one reading

_ALL_COUNTS = "SELECT run_id, state, count(*) FROM jobs GROUP BY run_id, state"
_NEW_JOB_COUNTS = "SELECT run_id, state, count(*) FROM jobs WHERE id > :after GROUP BY run_id, state"
_LAST_IDS = "SELECT (SELECT max(id) FROM jobs), (SELECT max(id) FROM attempts)"
_RUNNING = f"SELECT id, job_id FROM attempts WHERE state = {literal(AttemptState.RUNNING)}"  # ix_attempts_state_worker
_OPENED_SINCE = "SELECT id, job_id FROM attempts WHERE id > :after"
_JOB_STATES = "SELECT id, run_id, state FROM jobs WHERE id IN ({ids})"


@dataclass
class _Reading:
    counts: dict[int, dict[str, int]]  # run id -> state -> jobs
    running: dict[int, int]  # the attempts running then: attempt id -> job id
    last_job: int
    last_attempt: int
    read_at: float  # time.monotonic()


class LiveCounts:
    def __init__(self, db: ReadOnlyDB, recount_share: float = RECOUNT_SHARE):
        self.db, self.recount_share = db, recount_share
        self._lock = threading.Lock()
        self._reading: _Reading | None = None
        self._counted_at = float("-inf")
        self._count_cost = 0.0
        self._recounting = False
        self.full_counts = 0  # how many full counts were made (tests and the benchmark read it)

    def of_run(self, run_id: int) -> dict[str, int]:
        """The run's jobs per state, every state named (0 for none)."""
        return {**dict.fromkeys(STATES, 0), **self.current().get(run_id, {})}

    def current(self) -> dict[int, dict[str, int]]:
        """The counts now: the first reading counts every job; later ones move the last reading on, while a full
        count, when one is due, runs in a thread of its own, so that no poll waits for it."""
        with self._lock:
            now = time.monotonic()
            if self._reading is None:
                with self.db.snapshot() as snap:
                    self._reading = self._count(snap)
            elif now - self._reading.read_at >= FRESH_FOR:
                with self.db.snapshot() as snap:
                    self._reading = self._advance(snap, self._reading)
            if not self._recounting and now - self._counted_at >= self.recount_share * self._count_cost:
                self._recounting = True
                threading.Thread(target=self._recount, daemon=True).start()
            return self._reading.counts

    def _recount(self) -> None:
        """A full count. Its reading is of its own snapshot: the next poll moves it on from there, by what the
        attempts say happened since, so it may replace a reading that is newer."""
        try:
            with self.db.snapshot() as snap:
                reading = self._count(snap)
            reading.read_at = float("-inf")  # older than what the pages show: the next poll moves it on first
            with self._lock:
                self._reading = reading
        except Exception:  # noqa: BLE001 - a DB busy or gone now: the polls say so, and a later count tries again
            self._counted_at = time.monotonic()
        finally:
            self._recounting = False

    def _count(self, snap: Snapshot) -> _Reading:
        started = time.monotonic()
        last_job, last_attempt = snap.rows(_LAST_IDS)[0]  # in the same snapshot as the counts
        counts: dict[int, dict[str, int]] = {}
        for run_id, state, n in snap.rows(_ALL_COUNTS):
            counts.setdefault(run_id, {})[state] = n
        running = dict(snap.rows(_RUNNING))
        self._counted_at, self._count_cost = started, time.monotonic() - started
        self.full_counts += 1
        return _Reading(counts, running, last_job or 0, last_attempt or 0, started)

    def _advance(self, snap: Snapshot, before: _Reading) -> _Reading:
        """The counts of `before` moved on by what the attempts say happened since."""
        last_job, last_attempt = snap.rows(_LAST_IDS)[0]
        last_job, last_attempt = last_job or 0, last_attempt or 0
        counts = copy.deepcopy(before.counts)
        if last_job > before.last_job:  # jobs enqueued since: counted as they are now
            for run_id, state, n in snap.rows(_NEW_JOB_COUNTS, {"after": before.last_job}):
                _add(counts, run_id, state, n)
        running = dict(snap.rows(_RUNNING))
        was: dict[int, str] = {
            job: JobState.RUNNING.value for attempt, job in before.running.items() if attempt not in running
        }
        if last_attempt > before.last_attempt:
            for _, job in snap.rows(_OPENED_SINCE, {"after": before.last_attempt}):
                was.setdefault(job, JobState.QUEUED.value)
        moved = [job for job in was if job <= before.last_job]  # a newer job's count is already its current state
        for ids, params in sql.in_lists("id", moved):
            for job, run_id, state in snap.rows(_JOB_STATES.format(ids=ids), params):
                if state != was[job]:
                    _add(counts, run_id, was[job], -1)
                    _add(counts, run_id, state, 1)
        return _Reading(counts, running, last_job, last_attempt, time.monotonic())


def _add(counts: dict[int, dict[str, int]], run_id: int, state: str, n: int) -> None:
    states = counts.setdefault(run_id, {})
    states[state] = states.get(state, 0) + n
