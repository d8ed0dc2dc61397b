"""The worker loop: claim jobs, run up to N at once, record how each ended, heartbeat, reap the dead.

One thread, the loop, watches every slot's job through a pidfd, records the jobs that ended and claims their
successors in one transaction, and hands each claimed job to a starter thread, which starts it in its own process
group (a child's exec takes longer than the rest of a quick job's start, and the loop goes on meanwhile). The loop
also stops jobs (timeout, cancel, stop signal) and stores what they log (their metrics). A heartbeat thread beats
and runs the reaper. The main thread owns the signals (TERM, INT, HUP from a closed terminal, USR1
for Slurm's pre-preemption warning) and the fence, and never waits on the DB: on PostgreSQL a worker cut off from
the DB stops its jobs before its lease runs out, however long its DB calls hang (docs/reliability.md).
Every DB call rides out an outage (db.DbContact): the jobs run on, and their ends are recorded when it is back.
"""

from __future__ import annotations

import functools
import os
import queue as fifo
import random
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobqueue import queue
from jobqueue.db import RETRY_FIRST, RETRY_MAX, Database, DbContact, Unreachable
from jobqueue.errors import UserError
from jobqueue.metrics import METRICS_FILE_ENV, experiment_dir_for, find_event_files, metrics_file_for
from jobqueue.paths import without_password
from jobqueue.processes import Guard, JobProcess, crash_point, signal_group, start_job
from jobqueue.reaper import reap
from jobqueue.states import AttemptState, JobState

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
PID_RECORD_DELAY = 0.05  # seconds; see Worker._watch
METRICS_EVERY = 30.0  # seconds between reads of a running job's metrics files
STARTERS = 2  # threads that start jobs: while one waits for its child's exec, the other can start the next
END_BATCH_WAIT = 0.002  # seconds an end may wait for others to share its transaction; see Worker._hold_ends
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_METRICS_FILE_ENV = METRICS_FILE_ENV.encode()


def parse_gpus(spec: str | None) -> list[str] | None:
    """`none` (inherit CUDA_VISIBLE_DEVICES), `0`, `0,1` -> None or the list of GPU ids."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not all(g.isdigit() for g in gpus):
        raise UserError(f"--gpu {spec}: give GPU indices like 0 or 0,1 (or none to leave CUDA_VISIBLE_DEVICES alone)")
    return gpus


@dataclass(frozen=True)
class WorkerEvent:
    """A worker's message, with what a progress view needs to know of it without reading its words (a job's name
    may hold any of them)."""

    message: str
    notable: bool = True  # a progress view shows only these: not a job's start, success, or stop with its worker
    failed_job: int | None = None  # a job whose attempt failed or ran out of time: a view adds its log's last line


@dataclass
class WorkerSettings:
    slots: int = 1
    gpus: list[str] | None = None  # None: leave CUDA_VISIBLE_DEVICES as inherited
    experiments_per_gpu: int = -1  # > 0: pin each job to one GPU of `gpus`, at most this many per GPU
    run_id: int | None = None
    job_id: int | None = None
    wait: bool = False
    pause_between: float = 0.0
    grace: float = 30.0
    heartbeat_interval: float = 5.0
    lease: float = queue.DEFAULT_LEASE_SECONDS
    reap_interval: float = 30.0
    poll_interval: float = 1.0
    metrics_every: float = METRICS_EVERY  # 0: read a job's metrics files only when its attempt ends
    backend: str = "processes"
    quiet: bool = False
    on_event: Callable[[WorkerEvent], None] | None = None  # for progress lines; default: stderr unless quiet


@dataclass
class _Running:
    """A started job, as the loop watches it."""

    process: JobProcess
    deadline: float | None  # its timeout, monotonic
    pid_due: float | None  # when its pid goes into its attempt's row
    metrics_due: float | None
    stop: tuple[AttemptState, str] | None = None  # how it ends, once the worker has sent it TERM
    kill_at: float | None = None  # when it gets KILL, if it is still there


@dataclass
class _Slot:
    index: int
    # From its claim until its end is recorded: the heartbeat renews it meanwhile.
    job: queue.ClaimedJob | None = None
    # The attempt the heartbeat found taken away (cancelled, declared lost). An attempt id, not a flag:
    # by the time the loop looks the slot may be running its next job, which must not be stopped.
    taken_attempt: int | None = None
    gpu: str | None = None
    # The job's process group while the main thread may signal it: cleared, under Worker.lock, before the loop
    # reaps its leader, so that the group id cannot have been reused by then.
    pid: int | None = None
    fenced: tuple[int, float] | None = None  # (attempt id, when it was sent TERM) once the fence stopped its job
    # The loop's alone:
    started: float = 0.0  # monotonic, from the claim
    running: _Running | None = None
    exited: tuple[int, int, float] | None = None  # (return code, pid, decide by): see Worker._exited
    ended: queue.Finished | None = None  # how the job ended, to be recorded
    ended_at: float = 0.0


@dataclass
class WorkerResult:
    ran: int = 0
    failed: int = 0
    interrupted: int = 0
    stop_signal: int | None = None
    fenced: bool = False
    crashed: bool = False

    @property
    def exit_code(self) -> int:
        if self.fenced or self.crashed:
            return 3
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return 1 if self.failed else 0


class Worker:
    info: queue.WorkerInfo  # its row in the workers table, from run() on

    def __init__(self, db: Database, settings: WorkerSettings):
        self.db = db
        self.s = settings
        if settings.experiments_per_gpu > 0:
            if not settings.gpus:
                raise UserError("--experiments-per-gpu needs --gpu with the GPUs to spread jobs over, e.g. --gpu 0,1")
            settings.slots = min(settings.slots, len(settings.gpus) * settings.experiments_per_gpu)
        self.stopping = threading.Event()
        self.speaks = settings.on_event is not None or not settings.quiet  # else no message is worth formatting
        self.guard_ready = threading.Event()  # no job starts before the guard that kills it if we die
        self.looping = False  # the loop thread runs: jobs may be running
        self.loop_done = threading.Event()
        self.lock = threading.Lock()  # slots' pid and fenced, between the loop and the fence
        self.slots = [_Slot(index) for index in range(settings.slots)]
        self.starts: fifo.SimpleQueue = fifo.SimpleQueue()  # claimed jobs, for the starter threads
        self.started: fifo.SimpleQueue = fifo.SimpleQueue()  # (slot, JobProcess or how it failed to start)
        self.starters = min(STARTERS, settings.slots)
        self.starting = 0  # jobs handed to the starters, not yet back
        # The loop's alone:
        self.next_start = 0.0  # --pause-between: no claim before
        self.claim_after = 0.0  # the queue was found empty: the next claim of a free slot waits until then
        self.found_nothing = False  # the last claim came back with fewer jobs than it asked for
        self.db_retry_at = 0.0  # the DB was unreachable: the next record or claim waits until then
        self.db_retry_delay = RETRY_FIRST
        self.gave_up = False  # stopping, its jobs stopped, and the DB gone for a lease: their ends stay unrecorded
        self.gpu_load = {g: 0 for g in settings.gpus or []}
        self.gpu_text = ",".join(settings.gpus) if settings.gpus else None  # what every job of this worker is given
        self.result = WorkerResult()
        self.run_names: dict[int, str] = {}
        self.metrics_notice_given = False
        self.contact = DbContact(self._say, lambda: f"{self._busy()} jobs still running")
        # The fence (PostgreSQL only: an SQLite DB is on this host, where reapers find the dead by PID and kill what
        # a hung worker left). A reaper may requeue our jobs once our last heartbeat is a lease old by the DB's
        # clock; we measure from the moment our last successful heartbeat was sent, which is earlier, and stop our
        # jobs a margin before: their grace to stop after TERM (at most half the lease) and a heartbeat interval.
        self.fences = not db.is_sqlite
        self.fence_grace = min(settings.grace, settings.lease / 2)
        self.fence_after = settings.lease - self.fence_grace - settings.heartbeat_interval
        if self.fences and settings.lease < 4 * settings.heartbeat_interval:
            raise UserError(
                f"--lease {settings.lease:g}: give at least 4 x --heartbeat ({4 * settings.heartbeat_interval:g} s); "
                "a worker cut off from the DB stops its jobs before its lease runs out"
            )
        self.last_beat = time.monotonic()  # when the last successful heartbeat (or the registration) was sent
        self.beats_done = threading.Event()
        # The guard's deadline, where the fence's KILL falls: a worker that cannot fence (hung, or frozen by
        # SIGSTOP while its jobs run on) has its jobs killed by its guard before a reaper elsewhere may requeue them.
        self.guard_after = settings.lease - settings.heartbeat_interval if self.fences else 0.0
        self.guard: Guard | None = None
        self.guard_silence_end = 0.0  # the first beat after a silence the guard may have acted on

    # --- main thread -------------------------------------------------------------------------

    def run(self) -> WorkerResult:
        sent = time.monotonic()
        self.info = self.contact.call(
            lambda: queue.register_worker(
                self.db,
                slots=self.s.slots,
                gpus=self.gpu_text,
                backend=self.s.backend,
                run_id=self.s.run_id,
                heartbeat_seconds=self.s.heartbeat_interval,
            )
        )
        self.last_beat = sent  # registering records a first heartbeat
        # Its jobs die with this worker, even by SIGKILL: the guard kills whatever carries these marks. The DB's URL
        # without its password: a job that writes its environment to its log must not write the password there.
        self.marks = {"JQ_DB": without_password(self.db.url), "JQ_WORKER_ID": str(self.info.id)}
        self.mark_bytes = {k.encode(): os.fsencode(v) for k, v in self.marks.items()}
        self.base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()} | self.mark_bytes
        self.cwd = os.getcwd()
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # every job's stdin
        self.wake_r, self.wake_w = os.pipe()  # a byte wakes the loop: a stop, a cancel, a started job
        wake_w = self.wake_w
        os.set_blocking(self.wake_r, False)  # poll() says when to read; draining must never block
        os.set_blocking(self.wake_w, False)  # nor waking it, from a signal handler say
        guard = None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self._reap()  # pick up what died before we started
            # Now, not after the first claims, which would wait for it.
            self.run_names.update(self._call(lambda: queue.run_names(self.db)))
            beats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beats.start()
            self.looping = True
            loop = threading.Thread(target=self._loop_thread, name="jobs", daemon=True)
            loop.start()
            try:
                # The guard's interpreter takes a core while it starts: started after the loop, whose first claims
                # it would otherwise slow down, and before any job, which it must be there to kill.
                guard = self.guard = Guard(self.marks, self.guard_after, time.monotonic() - self.last_beat)
            finally:
                self.guard_ready.set()
            self._supervise()
            loop.join()
            self.beats_done.set()
            beats.join(timeout=RETRY_MAX)  # not for ever: its call may hang on a connection a partition holds
            if beats.is_alive():
                self.wake_w = -1  # the heartbeat may yet wake a loop that is gone: not through a reused descriptor
        finally:
            self.beats_done.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if guard is not None and not self.looping:
                guard.stand_down()  # every job is over; otherwise the guard kills what is left when we exit
            try:
                self._call(self._sign_off, give_up=self._gone_too_long)
            except Unreachable:
                self._say("not marked stopped in the DB, which stays unreachable: the reaper will find it gone")
            os.close(self.wake_r)
            os.close(wake_w)
            if not self.looping:  # else a job may still be starting with it
                os.close(self.devnull)
        return self.result

    def _sign_off(self) -> None:
        """Mark this worker stopped. After an outage or a crash of its loop, once the loop is done, also requeue what
        the DB still counts as ours: a claim that committed but whose answer the outage lost, which never ran, or
        the jobs of a loop that crashed (it killed them)."""
        if not ((self.contact.outages or self.result.crashed) and not self.looping):
            queue.stop_worker(self.db, self.info.id)
            return
        if self.contact.outages:
            why = "it claimed a job during a database outage but never heard back"
        else:
            why = "its worker crashed"
        lost = queue.LostWorker(self.info.id, self.info.host, self.info.pid, why)
        jobs = queue.requeue_jobs_of_dead_worker(self.db, lost)
        if jobs:
            self._say(f"worker {self.info.id}: requeued jobs {', '.join(map(str, jobs))}: {why}")

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            _leave_the_terminal()
        if self.result.stop_signal is None:
            self.result.stop_signal = signum
            self._say(
                f"worker {self.info.id}: got {signal.Signals(signum).name}, stopping its jobs and handing them back"
            )
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping.set()
        self._wake_loop()

    def _wake_loop(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except OSError:  # full of wake-ups the loop has yet to read (it will look), or the loop is gone
            pass

    def _supervise(self) -> None:
        """Wait for the loop to end (or a signal, whose handler runs here), and keep the fence."""
        tick = min(0.5, self.s.heartbeat_interval)
        while not self.loop_done.wait(tick):
            if self.fences:
                self._fence()

    def _fence(self) -> None:
        """Cut off from the DB for lease - grace - heartbeat interval: TERM every job, KILL it after the grace.
        A reaper may requeue them from a lease after our last heartbeat; by then they are gone. Done here, not by
        the loop thread, which may be waiting on a DB call that hangs."""
        now = time.monotonic()
        silent = now - self.last_beat
        if silent < self.fence_after:
            return
        with self.lock:
            running = [(slot, slot.pid, slot.job.attempt_id) for slot in self.slots if slot.pid and slot.job]
            new = [(slot, pid, attempt) for slot, pid, attempt in running if not _fenced(slot, attempt)]
            if new:
                self._say(
                    f"worker {self.info.id}: no heartbeat recorded for {silent:.0f} s: stopping its {len(new)} jobs "
                    f"before its lease of {self.s.lease:g} s runs out; they are queued again when the database is back"
                )
            for slot, pid, attempt in new:
                slot.fenced = (attempt, now)
                signal_group(pid, signal.SIGTERM)
            for slot, pid, attempt in running:  # the grace is over: KILL (a fence of an earlier job does not count)
                if slot.fenced is not None and slot.fenced[0] == attempt and now - slot.fenced[1] >= self.fence_grace:
                    signal_group(pid, signal.SIGKILL)

    # --- heartbeat thread ----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Beat every heartbeat interval, and twice a second while the DB is unreachable, so that the first beat
        after an outage comes at most that late; reap now and then."""
        due = self.last_beat + self.s.heartbeat_interval
        last_reap = time.monotonic()
        while not self.beats_done.wait(max(0.0, due - time.monotonic())):
            sent = time.monotonic()
            jobs = [(slot, slot.job) for slot in self.slots]  # each read once: the loop may clear it meanwhile
            running = {job.attempt_id: slot for slot, job in jobs if job is not None}
            try:
                ok, taken = self.contact.once(functools.partial(queue.heartbeat, self.db, self.info.id, list(running)))
            except Exception as exc:  # not an outage (SQLite busy past its retries, say): keep the jobs, try again
                self._say(f"worker {self.info.id}: heartbeat failed ({exc}); retrying")
                ok, taken = False, []
            if not ok:
                due = time.monotonic() + min(self.s.heartbeat_interval, RETRY_FIRST)
                continue
            due = sent + self.s.heartbeat_interval
            with self.lock:
                if self.guard_after and sent - self.last_beat >= self.guard_after:
                    self.guard_silence_end = sent
                self.last_beat = sent
            if self.guard is not None:
                self.guard.beat(time.monotonic() - sent)
            if self.fences:
                self._wake_loop()  # it may be waiting for a renewed lease to claim
            if taken is None:
                if not self.result.fenced:
                    self._say(f"worker {self.info.id}: declared lost by another worker; stopping its jobs")
                self.result.fenced = True
                self._stop_all()
                continue
            for attempt_id in taken:
                running[attempt_id].taken_attempt = attempt_id
            if taken:
                self._wake_loop()
            if sent - last_reap >= self.s.reap_interval and not self.stopping.is_set():
                last_reap = sent
                try:
                    self._reap()
                except Exception as exc:
                    self._say(f"worker {self.info.id}: reaper failed ({exc})")

    def _reap(self) -> None:
        """Reap, judging others by their heartbeats only once we have been in contact with the DB for a lease."""
        self.contact.once(
            lambda: reap(self.db, self.s.lease, say=self._say, in_contact_for=self.contact.in_contact_for())
        )

    def _call(self, fn: Callable, give_up: Callable[[], bool] | None = None):
        """fn(), retried while the DB is unreachable; a stopping worker gives up after a lease of outage."""
        return self.contact.call(fn, give_up=give_up or self._stopping_and_gone_too_long)

    def _gone_too_long(self) -> bool:
        return self.contact.down_for() > self.s.lease

    def _stopping_and_gone_too_long(self) -> bool:
        """By a lease of outage a reaper may requeue what we have not recorded: our jobs are stopped by then."""
        return self.stopping.is_set() and self._gone_too_long()

    def _lease_at_risk(self, now: float) -> bool:
        """The fence is up, or about to be: claim nothing until a heartbeat renews the lease."""
        return self.fences and now - self.last_beat >= self.fence_after

    def _busy(self) -> int:
        return sum(slot.job is not None for slot in self.slots)

    # --- the loop thread ---------------------------------------------------------------------
    #
    # Every DB call it makes, it makes for every slot: one that hangs (a partition holding a PostgreSQL connection,
    # until its timeout) holds back every slot's events, where a slot thread held back its own. The jobs are safe
    # meanwhile: the fence, in the main thread, stops them before the lease runs out. An unreachable DB holds
    # nothing back: the loop records and claims again later and watches its jobs meanwhile.

    def _loop_thread(self) -> None:
        self.guard_ready.wait()
        starters = [
            threading.Thread(target=self._starter, name=f"starter-{n}", daemon=True) for n in range(self.starters)
        ]
        for thread in starters:
            thread.start()
        try:
            with self.db.kept_connection():  # it records and claims every job of the worker
                self._loop()
        except BaseException as exc:
            # A bug or a DB that stays unreachable: stop the whole worker loudly rather than run on unwatched.
            if isinstance(exc, Unreachable):
                self._say(f"worker {self.info.id}: {exc}; giving up, the reaper will requeue its jobs")
            else:
                import traceback

                traceback.print_exc()
            self.result.crashed = True
            self._stop_all()
        finally:
            for _ in starters:
                self.starts.put(None)
            for thread in starters:
                thread.join()
            if self.result.crashed:
                self._kill_jobs()
            self.looping = False
            self.loop_done.set()

    def _kill_jobs(self) -> None:
        """After a crash of the loop: nothing is left to watch its jobs, which go now (signing off requeues them)."""
        while True:
            try:
                slot, started = self.started.get_nowait()
            except fifo.Empty:
                break
            if isinstance(started, JobProcess):
                slot.running = _Running(started, None, None, None)
        for slot in self.slots:
            if slot.running is not None:
                signal_group(slot.running.process.pid, signal.SIGKILL)
                with self.lock:
                    slot.pid = None
                slot.running.process.reap()
                slot.running = None

    def _loop(self) -> None:
        """Until the queue is drained (unless --wait) or the worker stops: watch the jobs, record their ends and
        claim their successors, start what was claimed."""
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        watched: dict[int, _Slot] = {}  # by pidfd
        while True:
            now = time.monotonic()
            self._take_started(poller, watched)
            for slot in self.slots:
                if slot.running is not None:
                    self._watch(slot, now)
                elif slot.exited is not None:
                    self._decide(slot, now)
            self._record_and_claim(now)
            if self._done():
                return
            for fd, _ in poller.poll(self._wait_ms()):
                if fd == self.wake_r:
                    _drain(fd)
                    continue
                slot = watched.pop(fd)
                poller.unregister(fd)
                self._exited(slot)

    def _take_started(self, poller, watched: dict[int, _Slot]) -> None:
        """The starter threads' jobs: watched from now on, or ended already (they could not start)."""
        while True:
            try:
                slot, started = self.started.get_nowait()
            except fifo.Empty:
                return
            self.starting -= 1
            if not isinstance(started, JobProcess):
                self._ended(slot, started)
                continue
            job = slot.job
            assert job is not None
            every = self.s.metrics_every
            slot.running = _Running(
                started,
                deadline=slot.started + job.timeout if job.timeout else None,
                pid_due=slot.started + PID_RECORD_DELAY,
                metrics_due=slot.started + every if every > 0 else None,
            )
            poller.register(started.pidfd, select.POLLIN)
            watched[started.pidfd] = slot

    def _watch(self, slot: _Slot, now: float) -> None:
        """Stop the job on timeout, cancel, or a stop signal; KILL it after its grace; record its pid and read its
        metrics when they are due.

        The pid goes into the attempt's row once the job has run PID_RECORD_DELAY: a job that ends sooner has it
        recorded with its end, which saves a quick job one of its two transactions.

        Every metrics_every seconds the job's metrics files are read here: in the main thread a long read would hold
        back the fence, in the heartbeat's the heartbeat (a worker silent past its lease is declared lost). What it
        costs: while a job's metrics are read, every other slot's events wait (an end, a timeout, a cancel), a
        moment for a small file; and a job's reads (these and the last, at its end) never overlap."""
        job, running = slot.job, slot.running
        assert job is not None and running is not None
        if running.stop is None:
            if self.result.fenced:
                self._stop(slot, now, AttemptState.INTERRUPTED, "its worker was declared lost", grace=0)
            elif slot.taken_attempt == job.attempt_id:
                self._stop(slot, now, AttemptState.CANCELLED, "cancelled", grace=self.s.grace)
            elif self.stopping.is_set():
                name = signal.Signals(self.result.stop_signal).name if self.result.stop_signal else "stop"
                self._stop(slot, now, AttemptState.INTERRUPTED, f"worker stopped by {name}", grace=self.s.grace)
            elif running.deadline is not None and now >= running.deadline:
                reason = f"ran over its timeout of {job.timeout:g}s"
                self._stop(slot, now, AttemptState.TIMEOUT, reason, grace=self.s.grace)
        elif self.result.fenced and running.kill_at is not None:
            running.kill_at = now  # declared lost: no grace left
        if running.kill_at is not None and now >= running.kill_at:
            signal_group(running.process.pid, signal.SIGKILL)
            running.kill_at = None
        if running.pid_due is not None and now >= running.pid_due:
            # Not waited for while the DB is unreachable: its end records it.
            pid = running.process.pid
            recorded, _ = self.contact.once(lambda: queue.record_pid(self.db, job.attempt_id, pid))
            running.pid_due = None if recorded else now + RETRY_FIRST * 4
        if running.metrics_due is not None and now >= running.metrics_due:
            self._store_metrics(job, ended=False)
            running.metrics_due = time.monotonic() + self.s.metrics_every

    def _stop(self, slot: _Slot, now: float, outcome: AttemptState, reason: str, grace: float) -> None:
        """TERM the job's group, and KILL it after the grace; the job ends with this outcome however it exits."""
        running = slot.running
        assert running is not None
        signal_group(running.process.pid, signal.SIGTERM)
        running.stop = (outcome, reason)
        running.kill_at = now + grace
        running.pid_due = running.metrics_due = None

    def _exited(self, slot: _Slot) -> None:
        """The job's leader has exited: kill what it left in its group, reap it, and tell how it ended.

        scancel, a preemption or a shutdown signals every process of a Slurm job or a host at once: a job killed by
        TERM/INT/HUP may die a moment before the worker's own handler runs. Then it was interrupted, not failed:
        such an end waits up to 2 s for a stop signal (_decide), its slot kept meanwhile."""
        job, running = slot.job, slot.running
        assert job is not None and running is not None
        pid = running.process.pid
        signal_group(pid, signal.SIGKILL)  # what it left in its group (the leader is a zombie still)
        with self.lock:
            slot.pid = None
        rc = running.process.reap()
        slot.running = None
        crash_point("after_exit")
        outcome, reason = running.stop or (None, None)
        if outcome is None and rc == -signal.SIGKILL and self._guard_may_have_killed(slot.started):
            # (Before the fence: a worker woken from a freeze may fence jobs its guard has killed already.)
            outcome = AttemptState.INTERRUPTED
            reason = f"killed by its worker's guard: no heartbeat recorded for {self.guard_after:g} s"
        if outcome is None and _fenced(slot, job.attempt_id):
            outcome = AttemptState.INTERRUPTED
            reason = f"stopped by its worker, cut off from the database for {time.monotonic() - self.last_beat:.0f} s"
        if outcome is None and rc in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP) and not self.stopping.is_set():
            slot.exited = (rc, pid, time.monotonic() + 2.0)
            return
        self._finished(slot, rc, pid, outcome, reason)

    def _guard_may_have_killed(self, started: float) -> bool:
        """Whether the guard's deadline passed while a job started at `started` ran: the worker is silent that long
        now, or was since the job started."""
        with self.lock:
            silent = time.monotonic() - self.last_beat
            return bool(self.guard_after) and (silent >= self.guard_after or self.guard_silence_end > started)

    def _decide(self, slot: _Slot, now: float) -> None:
        """A job killed by TERM/INT/HUP (see _exited): interrupted if the worker is stopping by now, else failed."""
        assert slot.exited is not None
        rc, pid, decide_by = slot.exited
        if self.stopping.is_set() or now >= decide_by:
            slot.exited = None
            self._finished(slot, rc, pid, None, None)

    def _finished(self, slot: _Slot, rc: int, pid: int, outcome: AttemptState | None, reason: str | None) -> None:
        job = slot.job
        assert job is not None
        if outcome is None and self.stopping.is_set():
            outcome, reason = AttemptState.INTERRUPTED, "stopped together with its worker"
        if outcome is None:
            outcome = AttemptState.SUCCEEDED if rc == 0 else AttemptState.FAILED
        exit_code, sig = (None, -rc) if rc < 0 else (rc, None)
        seconds = time.monotonic() - slot.started
        self._store_metrics(job, ended=True)  # before the end is recorded: a launch that returns has them all
        self._ended(slot, queue.Finished(job, outcome, exit_code, sig, reason, pid, seconds))

    def _ended(self, slot: _Slot, finished: queue.Finished) -> None:
        """The slot's job is over; its end waits to be recorded, and its GPU is free for the next claim."""
        slot.ended, slot.ended_at = finished, time.monotonic()
        if slot.gpu:
            self.gpu_load[slot.gpu] -= 1
            slot.gpu = None

    def _record_and_claim(self, now: float) -> None:
        """Record the ends that wait, and claim a job for each free slot, in one transaction."""
        ends = [slot for slot in self.slots if slot.ended is not None]
        claims = self._claims(now, ends)
        if not ends and not claims or now < self.db_retry_at or self._hold_ends(now, ends, claims):
            return
        finished = [slot.ended for slot in ends if slot.ended is not None]
        wanted = [(slot.index, gpu or self.gpu_text) for slot, gpu in claims]
        where: dict[str, Any] = dict(run_id=self.s.run_id, job_id=self.s.job_id)
        ok, answer = self.contact.once(
            functools.partial(queue.finish_then_claim, self.db, finished, self.info, wanted, **where)
        )
        if not ok:
            self._unreachable(now, len(ends))
            return
        self.db_retry_delay = RETRY_FIRST
        assert answer is not None
        states, jobs = answer
        for slot, state in zip(ends, states):
            assert slot.ended is not None
            self._recorded(slot.ended, state)
            slot.ended = slot.job = None
        if claims:
            self.found_nothing = len(jobs) < len(claims)
            if self.found_nothing:
                self.claim_after = now + self.s.poll_interval
            if jobs and self.s.pause_between > 0:
                self.next_start = now + self.s.pause_between
        if any(job.run_id not in self.run_names for job in jobs):
            # A run enqueued since: read once, however many of its jobs follow. Waits through an outage (rare:
            # the claim has just reached the DB).
            self.run_names.update(self._call(lambda: queue.run_names(self.db)))
        for (slot, gpu), job in zip(claims, jobs):
            slot.job, slot.gpu, slot.started = job, gpu, now
            if gpu:
                self.gpu_load[gpu] += 1
            crash_point("after_claim")
            if self.stopping.is_set():  # the stop signal came while we were claiming
                self._ended(slot, queue.Finished(job, AttemptState.INTERRUPTED, reason="worker stopping"))
            else:
                self.starts.put((slot, job))
                self.starting += 1

    def _claims(self, now: float, ends: list[_Slot]) -> list[tuple[_Slot, str | None]]:
        """The slots to claim a job for now, each with its GPU in pinning mode: the free ones, and those whose end is
        recorded in the same transaction. None while stopping or while the lease is at risk; one at a time, at most
        every --pause-between seconds, with that option; with GPUs pinned, as many as the GPUs have room for."""
        if self.stopping.is_set() or self._lease_at_risk(now) or now < self.next_start:
            return []
        if not ends and now < self.claim_after:  # an end may have requeued a job (retries): its claim looks at once
            return []
        free = [slot for slot in self.slots if slot.job is None or slot.ended is not None]
        if self.s.pause_between > 0:
            free = free[:1]
        if self.s.experiments_per_gpu <= 0:
            return [(slot, None) for slot in free]
        load = dict(self.gpu_load)
        claims: list[tuple[_Slot, str | None]] = []
        for slot in free:
            gpu = min(load, key=lambda g: (load[g], int(g)))  # the least busy GPU, as Sample Factory picks
            if load[gpu] >= self.s.experiments_per_gpu:
                break
            load[gpu] += 1
            claims.append((slot, gpu))
        return claims

    def _hold_ends(self, now: float, ends: list[_Slot], claims: list) -> bool:
        """Whether the ends wait a moment for more to share their transaction: while every starter thread is busy,
        which the jobs claimed now would only wait for, at most END_BATCH_WAIT, and while fewer than half the slots
        have ended. A transaction costs more than the statements of one end and one claim, and quick jobs end a
        moment apart."""
        if not ends or self.stopping.is_set() or 2 * len(ends) >= len(self.slots):
            return False
        if self.starting < self.starters or now >= min(slot.ended_at for slot in ends) + END_BATCH_WAIT:
            return False
        return True

    def _unreachable(self, now: float, ends: int) -> None:
        """The DB is unreachable: record and claim again later, with backoff, and watch the jobs meanwhile. A stopping
        worker whose jobs are all stopped gives up after a lease of outage: by then a reaper may requeue them."""
        if self._stopping_and_gone_too_long() and all(s.job is None or s.ended is not None for s in self.slots):
            self._say(
                f"worker {self.info.id}: database unreachable for {self.contact.down_for():.0f} s; giving up, the "
                f"reaper will requeue its {ends} jobs"
            )
            self.result.crashed = True
            self.gave_up = True
            return
        self.db_retry_at = now + self.db_retry_delay * (0.5 + random.random())  # jitter, as DbContact.call
        self.db_retry_delay = min(RETRY_MAX, self.db_retry_delay * 2)

    def _done(self) -> bool:
        """Whether the loop is over: every slot free and the worker stopping, or (unless --wait) the queue drained.
        Not while a silent worker's jobs wait for a reaper: ours may judge it only after a lease in contact with
        the DB (reaper.py), and a worker exiting before then would leave them running in the DB until a `jq resume`."""
        if self.gave_up:
            return True
        if any(slot.job is not None for slot in self.slots):
            return False
        if self.stopping.is_set():
            return True
        if self.s.wait or not self.found_nothing:
            return False
        self.found_nothing = False  # asked again after the next claim that finds nothing
        return not self._jobs_await_reaper()

    def _wait_ms(self) -> float:
        """How long the loop may sleep until something is due: at most poll_interval, so that it looks again at
        what no event announces (a lease renewed, a queue that was empty)."""
        now = time.monotonic()
        dues = [now + self.s.poll_interval]
        for slot in self.slots:
            running = slot.running
            if running is not None:
                if running.stop is None and running.deadline is not None:
                    dues.append(running.deadline)
                dues += [t for t in (running.kill_at, running.pid_due, running.metrics_due) if t is not None]
            if slot.exited is not None:
                dues.append(slot.exited[2])
        ends = [slot.ended_at for slot in self.slots if slot.ended is not None]
        if ends:
            dues.append(max(self.db_retry_at, min(ends) + END_BATCH_WAIT))
        elif any(slot.job is None for slot in self.slots) and not (self.stopping.is_set() or self._lease_at_risk(now)):
            dues.append(max(self.db_retry_at, self.claim_after, self.next_start))  # (a renewed lease wakes the loop)
        return max(0.0, min(dues) - now) * 1000

    def _jobs_await_reaper(self) -> bool:
        ok, waiting = self.contact.once(lambda: queue.jobs_await_reaper(self.db, self.s.lease, self.info.id))
        if ok and waiting and self.contact.in_contact_for() >= self.s.lease:
            self._reap()  # now, rather than at the next reap_interval: nothing else is left for us to do
        return not ok or bool(waiting)  # unreachable: nothing is known, and an outage is ridden out

    # --- starter threads ---------------------------------------------------------------------

    def _starter(self) -> None:
        while (claimed := self.starts.get()) is not None:
            slot, job = claimed
            self.started.put((slot, self._start(slot, job)))
            self._wake_loop()

    def _start(self, slot: _Slot, job: queue.ClaimedJob) -> JobProcess | queue.Finished:
        """Start a claimed job; or how it ended, if it could not start."""
        if self.stopping.is_set():  # the stop signal came while it waited to start
            return queue.Finished(job, AttemptState.INTERRUPTED, reason="worker stopping")
        env = self._job_env(job, slot)
        argv = list(job.argv)
        if argv and argv[0].startswith("python"):
            argv[0] = sys.executable  # as Sample Factory does: the worker's own interpreter (its venv)
        problem, executable = self._find_program(argv, job, env)
        if problem:
            return queue.Finished(job, AttemptState.FAILED, exit_code=127, reason=problem)
        try:
            log = os.open(job.log_path, _LOG_FLAGS, 0o666)
        except FileNotFoundError:  # the first attempt in this directory
            os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
            log = os.open(job.log_path, _LOG_FLAGS, 0o666)
        try:
            process = start_job(argv, executable, job.cwd, env, log, self.devnull)
        except OSError as exc:
            return queue.Finished(
                job, AttemptState.FAILED, exit_code=126, reason=f"cannot start {argv[0]}: {exc.strerror}"
            )
        finally:
            os.close(log)
        with self.lock:
            slot.pid = process.pid
        crash_point("after_spawn")
        if self.speaks:
            self._say(
                f"started job {job.job_id} {job.name} (attempt {job.number}, slot {slot.index}"
                f"{', GPU ' + env[b'CUDA_VISIBLE_DEVICES'].decode() if slot.gpu or self.s.gpus else ''}) pid {process.pid}",
                notable=False,
            )
        return process

    # --- shared ----------------------------------------------------------------------------------

    def _store_metrics(self, job: queue.ClaimedJob, ended: bool) -> None:
        """Store what is new in the job's metrics files. At an attempt's end only if there is something to read,
        so that a quick job without metrics pays two stats (its JSON-lines file, its experiment directory), no
        transaction. Never stops the worker: a read that fails is told, and what it missed is read next time (or by
        the job's next attempt)."""
        metrics_file = metrics_file_for(job.log_path)
        experiment_dir = experiment_dir_for(job.log_path, job.name)
        # A later attempt reads at its end whatever it finds: an earlier attempt's file may hold what its worker,
        # killed outright, never read.
        if ended and job.number == 1 and not (os.path.exists(metrics_file) or _has_event_files(experiment_dir)):
            return
        from jobqueue import results

        try:
            stored, done = self.contact.once(
                lambda: results.collect(
                    self.db, job.job_id, job.attempt_id, experiment_dir=experiment_dir, metrics_file=metrics_file
                )
            )
        except Exception as exc:  # a file it cannot read, say; the job goes on
            self._say(f"job {job.job_id} {job.name}: metrics not stored ({exc})")
            return
        if not stored or done is None:  # the DB is unreachable (it says so once); the next read takes what this missed
            return
        if done.message and not self.metrics_notice_given:
            self.metrics_notice_given = True
            self._say(f"metrics of job {job.job_id} {job.name}: {done.message.removeprefix('jq: ')}")

    def _find_program(self, argv: list[str], job: queue.ClaimedJob, env: dict) -> tuple[str | None, str | None]:
        """(what stops the job from starting, or None; the program's path, found on the job's PATH)."""
        if not argv:
            return "empty command", None
        if job.cwd != self.cwd and not os.path.isdir(job.cwd):  # the worker's own directory is there
            return f"working directory {job.cwd} does not exist", None
        program = argv[0]
        if os.sep in program:
            path = program if os.path.isabs(program) else os.path.join(job.cwd, program)
            return (None if os.path.exists(path) else f"command not found: {program}"), None
        found = _which(program, env.get(b"PATH", os.defpath.encode()))
        return (None if found else f"command not found: {program} (not on PATH)"), found

    def _job_env(self, job: queue.ClaimedJob, slot: _Slot) -> dict[bytes, bytes]:
        """The job's environment, as bytes: Popen would encode it anyway, and os.environ.copy() decodes every
        variable; together the two cost a quick job more than its database transaction."""
        env = self.base_env.copy()  # the worker's marks included
        if job.env:
            env.update((os.fsencode(k), os.fsencode(v)) for k, v in job.env.items())
            env.update(self.mark_bytes)  # whatever the sweep set, the guard must find its marks
        env[b"JQ_JOB_ID"] = b"%d" % job.job_id
        env[b"JQ_RUN"] = os.fsencode(self.run_names.get(job.run_id, ""))
        env[b"JQ_ATTEMPT"] = b"%d" % job.number
        env[b"JQ_SLOT"] = b"%d" % slot.index
        env[b"JQ_ATTEMPT_ID"] = b"%d" % job.attempt_id
        env[_METRICS_FILE_ENV] = os.fsencode(metrics_file_for(job.log_path))
        if slot.gpu:
            env[b"CUDA_VISIBLE_DEVICES"] = slot.gpu.encode()
        elif self.gpu_text and self.s.experiments_per_gpu <= 0:
            env[b"CUDA_VISIBLE_DEVICES"] = self.gpu_text.encode()
        return env

    def _recorded(self, ended: queue.Finished, state: JobState | None) -> None:
        """Count and tell how an attempt ended, once it is recorded."""
        self.result.ran += 1
        if state in (JobState.FAILED, JobState.TIMEOUT):
            self.result.failed += 1
        if ended.outcome == AttemptState.INTERRUPTED:
            self.result.interrupted += 1
        if not self.speaks:
            return
        took = f" in {ended.seconds:.1f}s" if ended.seconds is not None else ""
        what = state.value if state else f"{ended.outcome.value} (no longer this worker's)"
        if state == JobState.QUEUED and ended.outcome != AttemptState.INTERRUPTED:
            what = f"{ended.outcome.value}, queued again for another attempt"
        detail = f"; {ended.reason}" if ended.reason else (f"; exit code {ended.exit_code}" if ended.exit_code else "")
        failed = ended.outcome in (AttemptState.FAILED, AttemptState.TIMEOUT)
        routine = state == JobState.SUCCEEDED or (ended.outcome == AttemptState.INTERRUPTED and self.stopping.is_set())
        self._say(
            f"job {ended.job.job_id} {ended.job.name}: {what}{took}{detail}",
            notable=not routine,
            failed_job=ended.job.job_id if failed else None,
        )

    def _say(self, message: str, notable: bool = True, failed_job: int | None = None) -> None:
        if self.s.on_event is not None:
            self.s.on_event(WorkerEvent(message, notable, failed_job))
        elif not self.s.quiet:
            print(f"jq worker: {message}", file=sys.stderr, flush=True)


def _leave_the_terminal() -> None:
    """After a hang-up every write to the terminal fails (EIO), and a failed print would stop the worker before it
    hands its jobs back: output that went to a terminal goes to /dev/null from now on; files and pipes keep theirs."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):  # stdout and stderr, whatever Python objects write to them
        try:
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                os.dup2(devnull, fd)
        except OSError:
            pass  # closed already
    os.close(devnull)


def _has_event_files(experiment_dir: str) -> bool:
    """Whether the job wrote TensorBoard events: looked for only in an experiment directory that is there."""
    return os.path.isdir(experiment_dir) and bool(find_event_files(experiment_dir))


def _fenced(slot: _Slot, attempt_id: int) -> bool:
    return slot.fenced is not None and slot.fenced[0] == attempt_id


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 1024):
            pass
    except BlockingIOError:
        pass


_which_cache: dict[tuple[str, bytes], str] = {}


def _which(program: str, path: bytes) -> str | None:
    """The program's full path (so that it need not be searched for on PATH for every job); only hits are kept."""
    import shutil

    key = (program, path)
    if key not in _which_cache:
        found = shutil.which(program, path=os.fsdecode(path))
        if found is None:
            return None
        _which_cache[key] = found
    return _which_cache[key]
