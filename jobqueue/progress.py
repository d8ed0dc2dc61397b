"""A live view of a run while it executes: counts per state, elapsed, an ETA, and each failure with its log's last line.

On a terminal, a rich progress bar for the run; otherwise a plain line when the counts change (or every 30 s).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobqueue import queue
from jobqueue.db import Database, Transaction
from jobqueue.report import tail
from jobqueue.states import JobState

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT)  # cancelled jobs did not run to an end
DONE_STATES = (*FINISHED_STATES, JobState.CANCELLED)
# The newest finished jobs of each state give the mean duration: recent jobs say how fast the run goes now, and a
# backward walk of ix_jobs_run_state_id that stops after this many rows costs the same on a million-job run.
DURATION_SAMPLE = 100
DURATION_REREAD = 2.0  # seconds between readings of the durations (once there is one), however many jobs finish
# Counting a run's jobs reads its whole part of the index; on a big run the view waits this many times as long as
# its last poll took before the next, so that it never takes more than a small share of the DB and a core.
POLL_SHARE = 10
PLAIN_LINE_EVERY = 30.0  # seconds: a line this often when not a terminal, even if the counts stay the same
LOG_LINE_SHOWN = 200  # characters of a failed job's last log line

_RECENT_DURATIONS = (
    "SELECT started_at, ended_at FROM jobs WHERE run_id = :run_id AND state = :state "
    "AND started_at IS NOT NULL AND ended_at IS NOT NULL ORDER BY id DESC LIMIT :sample"
)
_RUNNING_SINCE = "SELECT started_at, {now} AS now_at FROM jobs WHERE run_id = :run_id AND state = 'running'"
_LIVE_SLOTS = "SELECT coalesce(sum(slots), 0) FROM workers WHERE run_id = :run_id AND stopped_at IS NULL"
# The attempt whose failure was just reported: the job's newest failed one (a retry may already be running).
_FAILED_ATTEMPT_LOG = "SELECT log_path FROM attempts WHERE job_id = :job_id AND state IN ('failed', 'timeout') ORDER BY number DESC LIMIT 1"


# How worker.py reports an attempt that ended badly: "job 12 lr_0.1_seed_1: failed in 3.2s; exit code 1".
def format_seconds(seconds: float | None, round_up: bool = False) -> str:
    """`mm:ss` or `h:mm:ss`; an ETA rounds up, so that `00:00` means done."""
    if seconds is None:
        return "--:--"
    seconds = math.ceil(seconds) if round_up else int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass(frozen=True)
class Estimate:
    """Where a run stands, and how long the rest should take."""

    counts: dict[str, int]
    elapsed: float  # seconds since the view started
    mean_seconds: float | None  # of the run's recently finished jobs; None until one finishes
    parallel: int  # how many jobs run at once: the run's live worker slots, or the jobs running if more
    eta_seconds: float | None  # None while nothing has finished, or nothing is there to run the queue

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in DONE_STATES)

    @property
    def failed(self) -> int:
        return self.counts.get(JobState.FAILED, 0) + self.counts.get(JobState.TIMEOUT, 0)

    def states_text(self) -> str:
        return (
            f"{self.counts.get(JobState.SUCCEEDED, 0)} succeeded, {self.failed} failed, "
            f"{self.counts.get(JobState.RUNNING, 0)} running, {self.counts.get(JobState.QUEUED, 0)} queued"
        )

    def summary(self) -> str:
        """`3/8 done | 2 succeeded, 1 failed, 2 running, 3 queued | elapsed 00:07, ETA 00:06`."""
        eta = self.eta_seconds if self.done < self.total else 0
        return (
            f"{self.done}/{self.total} done | {self.states_text()} | "
            f"elapsed {format_seconds(self.elapsed)}, ETA {format_seconds(eta, round_up=True)}"
        )


def time_left(mean: float, running_for: list[float], queued: int, parallel: int) -> float | None:
    """Seconds until the last job ends, if every job takes `mean`: each running job ends when it has run `mean`
    (or now, if it already has), and each queued job starts on the slot that frees first.

    Every slot frees within `mean` of now, so each round of `parallel` queued jobs keeps the slots in the same
    order: the queue takes queued // parallel full rounds, then its remainder goes to the slots that free first."""
    free_at = sorted(max(mean - ran, 0.0) for ran in running_for)
    free_at = [0.0] * max(0, parallel - len(free_at)) + free_at  # idle slots
    if not queued:
        return free_at[-1] if free_at else 0.0
    if not free_at:
        return None
    rounds, rest = divmod(queued, len(free_at))
    end = free_at[-1] + rounds * mean
    return max(end, free_at[rest - 1] + (rounds + 1) * mean) if rest else end


class ProgressView:
    """Polls the run's state from the DB in a thread and shows it; say() shows a worker's event above it."""

    def __init__(self, db: Database, run: str, enabled: bool = True, interval: float = 0.5):
        self.db, self.run, self.enabled, self.interval = db, run, enabled, interval
        self.started = time.monotonic()
        self._run_id: int | None = None
        self._mean: float | None = None
        self._mean_read_at = float("-inf")
        self._mean_read_done = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tty = sys.stderr.isatty()
        self._progress: Progress | None = None  # on a terminal
        self._task: TaskID | None = None
        self._last_counts = ""
        self._last_print = 0.0
        # The worker's threads report failures while the view's thread prints its line.
        self._print_lock = threading.Lock()

    # --- the numbers ------------------------------------------------------------------------

    def estimate(self) -> Estimate:
        """The run's counts and ETA now. Besides the counts, a few reads that stay as short on a million-job run."""
        counts = {state: n for _, state, n in queue.status_counts(self.db, self.run)}
        if self._run_id is None:
            self._run_id = queue.get_run(self.db, self.run)["id"]
        done = sum(counts.get(s, 0) for s in DONE_STATES)
        now = time.monotonic()
        if done != self._mean_read_done and (self._mean is None or now - self._mean_read_at >= DURATION_REREAD):
            self._mean = self.db.transact(lambda tx: self._mean_duration(tx, counts), write=False)
            self._mean_read_at, self._mean_read_done = now, done
        running_for, slots = self.db.transact(self._running_and_slots, write=False)
        parallel = max(slots, len(running_for))
        queued = counts.get(JobState.QUEUED, 0)
        eta = None if self._mean is None else time_left(self._mean, running_for, queued, parallel)
        return Estimate(counts, now - self.started, self._mean, parallel, eta)

    def _mean_duration(self, tx: Transaction, counts: dict[str, int]) -> float | None:
        """The mean run time of the run's DURATION_SAMPLE last finished jobs (a job's times are its last attempt's)."""
        ended = []
        for state in FINISHED_STATES:
            if counts.get(state):
                ended += tx.dicts(
                    _RECENT_DURATIONS, {"run_id": self._run_id, "state": state.value, "sample": DURATION_SAMPLE}
                )
        ended.sort(key=lambda job: job["ended_at"], reverse=True)
        seconds = [(job["ended_at"] - job["started_at"]).total_seconds() for job in ended[:DURATION_SAMPLE]]
        return sum(seconds) / len(seconds) if seconds else None

    def _running_and_slots(self, tx: Transaction) -> tuple[list[float], int]:
        running = tx.dicts(_RUNNING_SINCE, {"run_id": self._run_id})
        (slots,) = tx.one(_LIVE_SLOTS, {"run_id": self._run_id})
        return [(job["now_at"] - job["started_at"]).total_seconds() for job in running], int(slots)

    def line(self, estimate: Estimate) -> str:
        """The plain line: `run: 3/8 done | 2 succeeded, 1 failed, 2 running, 3 queued | elapsed 00:07, ETA 00:06`."""
        return f"{self.run}: {estimate.summary()}"

    # --- events -----------------------------------------------------------------------------

    def say(self, message: str, failed_job: int | None = None) -> None:
        """A worker event worth showing (failures, lost workers) above the bar; a failed job's gets the last line of
        its log."""
        if not self.enabled:
            return
        if failed_job is not None:
            message = self._with_last_log_line(message, failed_job)
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            self._print_line(message)

    def _with_last_log_line(self, message: str, job_id: int) -> str:
        try:
            row = self.db.transact(lambda tx: tx.first(_FAILED_ATTEMPT_LOG, {"job_id": job_id}), write=False)
            lines = tail(row[0] if row else None, 5)
        except Exception:  # noqa: BLE001 - on a slot thread, which must go on whatever the DB or the log says
            return message
        # A progress bar in the log ends its updates with \r, not \n: the last one is the line.
        last = next((text for line in reversed(lines) if (text := line.split("\r")[-1].strip())), "")
        return f"{message} | log: {last[:LOG_LINE_SHOWN]}" if last else message

    # --- showing it -------------------------------------------------------------------------

    def _print_line(self, text: str) -> None:
        """One whole line on stderr: print() writes the text and its newline apart, so two threads' lines mix."""
        with self._print_lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def refresh(self) -> None:
        try:
            estimate = self.estimate()
        except Exception:  # noqa: BLE001 - a busy DB must never stop the run; the next tick tries again
            return
        if self._progress is not None:
            self._show_on_bar(estimate)
            return
        counts = estimate.states_text()
        if counts != self._last_counts or time.monotonic() - self._last_print > PLAIN_LINE_EVERY:
            self._last_counts, self._last_print = counts, time.monotonic()
            self._print_line(self.line(estimate))

    def _show_on_bar(self, estimate: Estimate) -> None:
        assert self._progress is not None and self._task is not None  # the bar is up: _start_bar made both
        self._progress.update(self._task, total=estimate.total, completed=estimate.done, summary=estimate.summary())

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[summary]}", markup=False),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(self.run, total=None, summary="")
        self._progress.start()

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.monotonic()
            self.refresh()
            wait = max(self.interval, POLL_SHARE * (time.monotonic() - started))

    def __enter__(self) -> ProgressView:
        if self.enabled:
            if self.tty:
                self._start_bar()
            self.refresh()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return
        try:
            estimate = self.estimate()
        except Exception:  # noqa: BLE001 - as in refresh(): the run's end must not fail for want of its last line
            estimate = None
        if self._progress is not None:
            if estimate is not None:
                self._show_on_bar(estimate)
            self._progress.stop()
        elif estimate is not None:
            self._print_line(self.line(estimate))
