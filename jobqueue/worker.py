"""The worker loop: claim jobs, run up to N at once, record how each ended, heartbeat, reap the dead.

One thread per slot claims a job, starts it in its own process group and waits on a pidfd, so the
next job starts the moment a slot frees; while it waits, it stores what the job logs (its metrics). A heartbeat
thread beats and runs the reaper. The main thread owns the signals (TERM, INT, HUP from a closed terminal, USR1
for Slurm's pre-preemption warning) and the fence, and never waits on the DB: on PostgreSQL a worker cut off from
the DB stops its jobs before its lease runs out, however long its DB calls hang (docs/reliability.md).
Every DB call rides out an outage (db.DbContact): the jobs run on, and their ends are recorded when it is back.
"""

from __future__ import annotations

import functools
import os
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
from jobqueue.processes import Guard, crash_point, signal_group, spawn_job, stop_group, wait_exit
from jobqueue.reaper import reap
from jobqueue.states import AttemptState, JobState

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
PID_RECORD_DELAY = 0.05  # seconds; see Worker._wait_job
METRICS_EVERY = 30.0  # seconds between reads of a running job's metrics files
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
    on_event: Callable[[str], None] | None = None  # for progress lines; default: stderr unless quiet


@dataclass
class _Slot:
    index: int
    wake_r: int
    wake_w: int
    job: queue.ClaimedJob | None = None
    # The attempt the heartbeat found taken away (cancelled, declared lost). An attempt id, not a flag:
    # by the time the notice arrives the slot may be running its next job, which must not be stopped.
    taken_attempt: int | None = None
    gpu: str | None = None
    # The job's process group while the main thread may signal it: cleared, under Worker.lock, before the slot
    # reaps its leader, so that the group id cannot have been reused by then.
    pid: int | None = None
    fenced: tuple[int, float] | None = None  # (attempt id, when it was sent TERM) once the fence stopped its job


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
        self.all_slots_started = threading.Event()
        self.slot_exited = threading.Event()
        self.live_slots = 0
        self.lock = threading.Condition()
        self.busy = 0
        self.drained = False
        self.next_start = 0.0
        self.gpu_load = {g: 0 for g in settings.gpus or []}
        self.gpu_text = ",".join(settings.gpus) if settings.gpus else None  # what every job of this worker is given
        self.slots: list[_Slot] = []
        self.result = WorkerResult()
        self.run_names: dict[int, str] = {}
        self.metrics_notice_given = False
        self.contact = DbContact(self._say, lambda: f"{self.busy} jobs still running")
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
        self.cut_off = False  # the fence is up: jobs are being stopped, nothing is claimed
        self.beats_done = threading.Event()

    # --- main thread -------------------------------------------------------------------------

    def run(self) -> WorkerResult:
        sent = time.monotonic()
        self.info = self.contact.call(
            lambda: queue.register_worker(
                self.db, slots=self.s.slots, gpus=self.gpu_text, backend=self.s.backend, run_id=self.s.run_id
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
        guard = None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self._reap()  # pick up what died before we started
            # Now, not by all slots at once for their first jobs.
            self.run_names.update(self._call(lambda: queue.run_names(self.db)))
            beats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beats.start()
            threads = []
            try:
                for index in range(self.s.slots):
                    wake_r, wake_w = os.pipe()
                    os.set_blocking(wake_r, False)  # poll() says when to read; draining must never block
                    slot = _Slot(index, wake_r, wake_w)
                    self.slots.append(slot)
                    with self.lock:
                        self.live_slots += 1
                    thread = threading.Thread(target=self._slot_loop, args=(slot,), name=f"slot-{index}", daemon=True)
                    thread.start()
                    threads.append(thread)
                # The guard's interpreter takes a core while it starts: started after the slot threads, which
                # it would otherwise slow down, and before any job, which it must be there to kill.
                guard = Guard(self.marks)
            finally:
                # All slots set off together: their first claims share a transaction, and their first jobs start
                # together.
                self.all_slots_started.set()
            self._supervise()
            for thread in threads:
                thread.join()
            self.beats_done.set()
            beats.join(timeout=RETRY_MAX)  # not for ever: its call may hang on a connection a partition holds
        finally:
            self.beats_done.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if guard is not None and not self.live_slots:
                guard.stand_down()  # every job is over; otherwise the guard kills what is left when we exit
            try:
                self._call(self._sign_off, give_up=self._gone_too_long)
            except Unreachable:
                self._say("not marked stopped in the DB, which stays unreachable: the reaper will find it gone")
            for slot in self.slots:
                os.close(slot.wake_r)
                os.close(slot.wake_w)
            if not self.live_slots:  # else a slot still starting a job may use it
                os.close(self.devnull)
        return self.result

    def _sign_off(self) -> None:
        """Mark this worker stopped. After an outage, once every slot is done, also requeue what the DB still counts
        as ours: a claim that committed but whose answer the outage lost, which no slot ever ran."""
        if not (self.contact.outages and not self.live_slots):
            queue.stop_worker(self.db, self.info.id)
            return
        why = "it claimed a job during a database outage but never heard back"
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
        with self.lock:
            self.lock.notify_all()
        for slot in self.slots:
            os.write(slot.wake_w, b"x")

    def _supervise(self) -> None:
        """Wait for the slots to end (or a signal, whose handler runs here), and keep the fence."""
        tick = min(0.5, self.s.heartbeat_interval)
        # Count slots rather than ask threads: a thread says it is done a moment before it is dead.
        while self.live_slots:
            self.slot_exited.wait(tick)
            self.slot_exited.clear()
            if self.fences:
                self._fence()

    def _fence(self) -> None:
        """Cut off from the DB for lease - grace - heartbeat interval: TERM every job, KILL it after the grace.
        A reaper may requeue them from a lease after our last heartbeat; by then they are gone. Done here, not by
        the slot threads, which may be waiting on a DB call that hangs."""
        now = time.monotonic()
        silent = now - self.last_beat
        if silent < self.fence_after:
            self.cut_off = False
            return
        with self.lock:
            self.cut_off = True
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
            running = {slot.job.attempt_id: slot for slot in self.slots if slot.job is not None}
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
                self.last_beat = sent
                self.lock.notify_all()  # slots waiting to claim until the lease is renewed
            if taken is None:
                self._say(f"worker {self.info.id}: declared lost by another worker; stopping its jobs")
                self.result.fenced = True
                self._stop_all()
                continue
            for attempt_id in taken:
                slot = running[attempt_id]
                slot.taken_attempt = attempt_id
                os.write(slot.wake_w, b"x")
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

    def _wait_for_lease(self) -> None:
        """Claim nothing while the fence is up: wait for a heartbeat that renews the lease (or a stop)."""
        if not self.fences:
            return
        with self.lock:
            while not self.stopping.is_set() and time.monotonic() - self.last_beat >= self.fence_after:
                self.lock.wait(self.s.poll_interval)

    # --- slot threads ------------------------------------------------------------------------

    def _slot_loop(self, slot: _Slot) -> None:
        self.all_slots_started.wait()
        try:
            self._claim_and_run(slot)
        except Unreachable as exc:  # a stopping worker that cannot record its jobs' ends: they are stopped, and
            self._say(f"worker {self.info.id}: slot {slot.index}: {exc}; giving up, the reaper will requeue its job")
            self.result.crashed = True
            self._stop_all()
        except BaseException:
            # A bug or a DB that stays unreachable: stop the whole worker loudly rather than run on with fewer slots.
            import traceback

            traceback.print_exc()
            self.result.crashed = True
            self._stop_all()
        finally:
            with self.lock:
                self.live_slots -= 1
            self.slot_exited.set()

    def _claim_and_run(self, slot: _Slot) -> None:
        ended: queue.Finished | None = None  # recorded in the same transaction as the next claim
        try:
            while not self.stopping.is_set():
                if ended is not None and (self.s.pause_between > 0 or self.cut_off):  # nothing may hold it back
                    self._record(ended)
                    ended = None
                self._pause_before_start()
                self._wait_for_lease()
                if self.stopping.is_set():
                    break
                gpu = self._take_gpu()
                if gpu is False:
                    continue
                job = None
                try:
                    gpus, run_id, job_id = gpu or self.gpu_text, self.s.run_id, self.s.job_id
                    where: dict[str, Any] = dict(slot=slot.index, gpus=gpus, run_id=run_id, job_id=job_id)
                    if ended is None:
                        job = self._call(functools.partial(queue.claim_next_job, self.db, self.info, **where))
                    else:
                        state, job = self._call(
                            functools.partial(queue.finish_then_claim, self.db, ended, self.info, **where)
                        )
                        self._recorded(ended, state)
                        ended = None
                finally:
                    if job is None:
                        self._release_gpu(gpu)
                if job is None:
                    if self._idle_should_exit():
                        return
                    continue
                slot.gpu = gpu
                with self.lock:
                    self.busy += 1
                try:
                    ended = self._run_job(slot, job)
                finally:
                    slot.job = None
                    self._release_gpu(gpu)
                    with self.lock:
                        self.busy -= 1
                        self.lock.notify_all()
        finally:
            if ended is not None:
                self._record(ended)

    def _pause_before_start(self) -> None:
        if self.s.pause_between <= 0:
            return
        with self.lock:
            start = max(time.monotonic(), self.next_start)
            self.next_start = start + self.s.pause_between
        self.stopping.wait(max(0.0, start - time.monotonic()))

    def _take_gpu(self):
        """In pinning mode, the least busy GPU with room (as Sample Factory picks); None otherwise."""
        if self.s.experiments_per_gpu <= 0:
            return None
        with self.lock:
            while not self.stopping.is_set():
                gpu = min(self.gpu_load, key=lambda g: (self.gpu_load[g], int(g)))
                if self.gpu_load[gpu] < self.s.experiments_per_gpu:
                    self.gpu_load[gpu] += 1
                    return gpu
                self.lock.wait(self.s.poll_interval)
        return False

    def _release_gpu(self, gpu) -> None:
        if gpu:
            with self.lock:
                self.gpu_load[gpu] -= 1
                self.lock.notify_all()

    def _idle_should_exit(self) -> bool:
        """Nothing to claim: exit once every slot is idle (unless --wait); meanwhile wait for a sibling. Nor while
        a silent worker's jobs wait for a reaper: ours may judge it only after a lease in contact with the DB
        (reaper.py), and a worker exiting before then would leave them running in the DB until a `jq resume`."""
        with self.lock:
            idle = not self.s.wait and self.busy == 0 and not self.drained
        awaiting = idle and self._jobs_await_reaper()  # outside the lock: it may reap, which may take a while
        with self.lock:
            if self.drained:
                return True
            if idle and self.busy == 0 and not awaiting:
                self.drained = True
                self.lock.notify_all()
                return True
            self.lock.wait(self.s.poll_interval)
            return self.drained

    def _jobs_await_reaper(self) -> bool:
        ok, waiting = self.contact.once(lambda: queue.jobs_await_reaper(self.db, self.s.lease, self.info.id))
        if ok and waiting and self.contact.in_contact_for() >= self.s.lease:
            self._reap()  # now, rather than at the next reap_interval: nothing else is left for us to do
        return not ok or bool(waiting)  # unreachable: nothing is known, and an outage is ridden out

    def _run_job(self, slot: _Slot, job: queue.ClaimedJob) -> queue.Finished:
        """Run one claimed job to its end; returns how it ended, for the caller to record."""
        slot.job = job
        crash_point("after_claim")
        started = time.monotonic()
        if self.stopping.is_set():  # the stop signal came while we were claiming
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
            proc = spawn_job(argv, executable, job.cwd, env, log, self.devnull)
        except OSError as exc:
            return queue.Finished(
                job, AttemptState.FAILED, exit_code=126, reason=f"cannot start {argv[0]}: {exc.strerror}"
            )
        finally:
            os.close(log)
        pidfd = os.pidfd_open(proc.pid)
        with self.lock:
            slot.pid = proc.pid
        try:
            crash_point("after_spawn")
            if self.speaks:
                self._say(
                    f"started job {job.job_id} {job.name} (attempt {job.number}, slot {slot.index}"
                    f"{', GPU ' + env[b'CUDA_VISIBLE_DEVICES'].decode() if slot.gpu or self.s.gpus else ''}) pid {proc.pid}"
                )
            outcome, reason = self._wait_job(slot, job, proc, pidfd, started)
        finally:
            with self.lock:
                slot.pid = None
            os.close(pidfd)
        rc = proc.wait()
        crash_point("after_exit")
        exit_code, sig = (None, -rc) if rc < 0 else (rc, None)
        if outcome is None and _fenced(slot, job.attempt_id):
            outcome = AttemptState.INTERRUPTED
            reason = f"stopped by its worker, cut off from the database for {time.monotonic() - self.last_beat:.0f} s"
        if outcome is None and self._stopped_with_worker(rc):
            outcome, reason = AttemptState.INTERRUPTED, "stopped together with its worker"
        if outcome is None:
            outcome = AttemptState.SUCCEEDED if rc == 0 else AttemptState.FAILED
        seconds = time.monotonic() - started
        self._store_metrics(job, ended=True)  # before the end is recorded: a launch that returns has them all
        return queue.Finished(
            job, outcome, exit_code=exit_code, signal=sig, reason=reason, pid=proc.pid, seconds=seconds
        )

    def _wait_job(self, slot, job, proc, pidfd, started) -> tuple[AttemptState | None, str | None]:
        """Wait for the job; stop it on timeout, cancel, or a stop signal. Returns (outcome, reason) if it was stopped.

        The pid goes into the attempt's row once the job has run PID_RECORD_DELAY: a job that ends sooner has it
        recorded with its end, which saves a quick job one of its two transactions.

        Every metrics_every seconds the job's metrics files are read here, in the slot's thread, which has nothing
        else to do while its job runs: in the main thread a long read would hold back the heartbeat (a worker
        silent past its lease is declared lost) and every other slot's read, and here a job's reads (this one and
        the last, at its end) never overlap. What it costs: the job's end, timeout or cancel waits for the read
        in progress."""
        deadline = started + job.timeout if job.timeout else None
        pid_due = started + PID_RECORD_DELAY
        metrics_due = started + self.s.metrics_every if self.s.metrics_every > 0 else None
        while True:
            dues = [t for t in (deadline, pid_due, metrics_due) if t is not None]
            event = wait_exit(pidfd, max(0.0, min(dues) - time.monotonic()) if dues else None, slot.wake_r)
            if event == "exited":
                signal_group(proc.pid, signal.SIGKILL)  # what it left in its group (the leader is a zombie still)
                return None, None
            if event == "timeout":
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    stop_group(pidfd, proc.pid, self.s.grace)
                    return AttemptState.TIMEOUT, f"ran over its timeout of {job.timeout:g}s"
                if pid_due is not None and now >= pid_due:
                    # Not waited for while the DB is unreachable: this thread must watch its job. Its end records it.
                    recorded, _ = self.contact.once(lambda: queue.record_pid(self.db, job.attempt_id, proc.pid))
                    pid_due = None if recorded else now + RETRY_FIRST * 4
                if metrics_due is not None and now >= metrics_due:
                    self._store_metrics(job, ended=False)
                    metrics_due = time.monotonic() + self.s.metrics_every
                continue
            _drain(slot.wake_r)
            if self.result.fenced:
                stop_group(pidfd, proc.pid, 0)
                return AttemptState.INTERRUPTED, "its worker was declared lost"
            if slot.taken_attempt == job.attempt_id:
                stop_group(pidfd, proc.pid, self.s.grace)
                return AttemptState.CANCELLED, "cancelled"
            if self.stopping.is_set():
                name = signal.Signals(self.result.stop_signal).name if self.result.stop_signal else "stop"
                stop_group(pidfd, proc.pid, self.s.grace)
                return AttemptState.INTERRUPTED, f"worker stopped by {name}"

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

    def _stopped_with_worker(self, rc: int) -> bool:
        """scancel, a preemption or a shutdown signals every process of a Slurm job or a host at once: a job
        killed by TERM/INT/HUP may die a moment before the worker's own handler runs. Then it was interrupted,
        not failed."""
        if rc not in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP):
            return self.stopping.is_set()
        return self.stopping.wait(2.0)

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
        if job.run_id not in self.run_names:
            self.run_names.update(self._call(lambda: queue.run_names(self.db)))
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

    def _record(self, ended: queue.Finished) -> None:
        self._recorded(ended, self._call(lambda: queue.record_finished(self.db, ended, self.info.id)))

    def _recorded(self, ended: queue.Finished, state: JobState | None) -> None:
        """Count and tell how an attempt ended, once it is recorded."""
        with self.lock:
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
        self._say(f"job {ended.job.job_id} {ended.job.name}: {what}{took}{detail}")

    def _say(self, message: str) -> None:
        if self.s.on_event is not None:
            self.s.on_event(message)
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
