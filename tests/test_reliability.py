"""Faults and bad input: killed at every step of a job's life, readers racing claimers, signals, huge output."""

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest

from benchmarks.chaos import run_chaos
from tests.test_worker import job_processes

LEDGER = """sh -c 'sleep 0.5; echo "$JQ_JOB_ID $JQ_ATTEMPT" >> ledger' job"""


@pytest.mark.parametrize("step", ["after_claim", "after_spawn", "after_exit"])
def test_a_worker_killed_at_each_step_of_a_job_leaves_exactly_one_recorded_success(project, step):
    project.sweep("steps", LEDGER, 1)
    project.jq("enqueue", "steps", check=True)
    crashed = project.jq("worker", env=project.env(JQ_CRASH_AT=step))
    assert crashed.returncode == -signal.SIGKILL
    assert project.states() == {"running": 1}
    resumed = project.jq("resume", "--no-progress", check=True)
    assert "1 lost jobs requeued" in resumed.stdout
    assert project.states() == {"succeeded": 1}
    attempts = project.sql("select number, state from attempts order by number")
    assert attempts == [{"number": 1, "state": "lost"}, {"number": 2, "state": "succeeded"}]
    executions = (project.path / "ledger").read_text().split("\n")[:-1]
    # At-least-once execution, never two attempts at once: the second attempt always runs to its end, after
    # the first. The first ran to its end when the crash came after it exited; never when it came before the
    # spawn. Right after the spawn it usually dies with its worker (the guard kills what carries the worker's
    # marks), but the guard acts a moment after the worker dies, so a quick job may end first; either way it is
    # over before `jq resume`, which would find and kill it by its JQ_ATTEMPT_ID, starts the second attempt.
    expected = {"after_claim": [["1 2"]], "after_spawn": [["1 2"], ["1 1", "1 2"]], "after_exit": [["1 1", "1 2"]]}
    assert executions in expected[step]
    assert job_processes(project.db) == []


def test_an_enqueue_killed_in_the_middle_leaves_all_rows_or_none(sqlite_project):
    p = sqlite_project
    p.write(
        "huge.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("huge", experiments=[
            Experiment("e", "python train.py", ParamGrid([("seed", list(range(1000))), ("lr", list(range(100)))]).generate_params()),
        ])
    """,
    )
    p.sweep("small", "true", 3)
    p.jq("enqueue", "small", check=True)
    killed = p.jq("enqueue", "huge", env=p.env(JQ_CRASH_AT="mid_enqueue"), timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert p.sql("select count(*) as n from jobs") == [{"n": 3}]
    assert p.sql("select name from runs") == [{"name": "small"}]
    p.jq("enqueue", "huge", check=True, timeout=300)
    assert p.sql("select count(*) as n from jobs") == [{"n": 100_003}]
    assert sqlite3.connect(p.db).execute("pragma integrity_check").fetchone()[0] == "ok"


def test_chaos_short_run_loses_doubles_and_orphans_nothing(tmp_path):
    r = run_chaos(
        tmp_path, jobs=40, workers=4, slots=2, kill_every=(0.3, 0.7), min_kills=12, seed=1, say=lambda m: None
    )
    assert r["kill_count"] >= 12
    assert (r["lost"], r["recorded_twice"], r["overlapping"], r["orphans"], r["integrity"]) == (0, 0, 0, 0, "ok"), r


def test_readers_in_a_loop_never_see_a_locked_database_while_eight_workers_claim(sqlite_project):
    p = sqlite_project
    p.sweep("busy", "true", 400)
    p.jq("enqueue", "busy", check=True)
    errors, stop = [], threading.Event()

    def read_loop(args):
        while not stop.is_set():
            proc = p.jq(*args)
            if proc.returncode != 0 or "locked" in proc.stderr:
                errors.append((args, proc.returncode, proc.stderr[-300:]))

    readers = [
        threading.Thread(target=read_loop, args=(a,))
        for a in (
            ["status"],
            ["list", "--state", "running"],
            ["sql", "select state, count(*) from jobs group by state"],
        )
    ]
    for t in readers:
        t.start()
    workers = [p.start("worker", "--slots", "2", "--quiet") for _ in range(8)]
    codes = [w.wait(300) for w in workers]
    stop.set()
    for t in readers:
        t.join()
    assert codes == [0] * 8, [w.stderr.read()[-500:] for w in workers]
    assert errors == []
    assert p.states() == {"succeeded": 400}


def test_a_job_killed_by_a_signal_is_recorded_with_that_signal(project):
    project.sweep("sig", "sh -c 'kill -SEGV $$' job", 1)
    project.jq("enqueue", "sig", check=True)
    assert project.jq("worker").returncode == 1
    (job,) = project.jobs()
    assert (job["state"], job["exit_code"], job["signal"]) == ("failed", None, signal.SIGSEGV)


def test_a_job_that_forks_a_daemon_and_exits_has_its_group_cleaned_up(sqlite_project):
    p = sqlite_project
    p.sweep("daemon", "sh -c 'sleep 60 & echo forked' job", 1)
    p.jq("enqueue", "daemon", check=True)
    p.jq("worker", check=True)
    assert p.states() == {"succeeded": 1}
    assert job_processes(p.db) == []


def test_a_job_with_a_hundred_megabytes_of_output_does_not_fill_the_workers_memory(sqlite_project):
    p = sqlite_project
    p.sweep("loud", "sh -c 'head -c 100000000 /dev/zero | tr \"\\\\0\" x; echo' job", 1)
    p.jq("enqueue", "loud", check=True)
    worker = p.start("worker")
    peak = 0
    proc = psutil.Process(worker.pid)
    while worker.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    assert worker.returncode == 0
    (attempt,) = p.sql("select log_path from attempts")
    assert os.path.getsize(attempt["log_path"]) == 100_000_001
    assert peak < 150 * 2**20  # the output goes to the log file, not through the worker


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, as on a full disk, instead of a core dump
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB file system (tmpfs) when we are root, as in CI; else None (a file size limit stands in)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode == 0
    ):
        yield mount
        subprocess.run(["umount", "-l", str(mount)])
    else:
        yield None


def test_a_full_disk_while_enqueueing_is_one_clear_line_and_leaves_the_queue_intact(sqlite_project, small_disk):
    p = sqlite_project
    if small_disk is not None:
        p.db = str(small_disk / "jobqueue.db")
    p.sweep("first", "true", 5)
    p.jq("enqueue", "first", check=True)
    p.sweep("big", "python train.py --with-a-long-argument-to-fill-pages", 20000)
    limit = None if small_disk is not None else _limit_file_size(os.path.getsize(p.db) + 256 * 1024)
    proc = subprocess.run(
        [sys.executable, "-m", "jobqueue", "enqueue", "big"],
        cwd=p.path,
        env=p.env(),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "disk is full" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert p.sql("select count(*) as n from jobs") == [{"n": 5}]
    assert sqlite3.connect(p.db).execute("pragma integrity_check").fetchone()[0] == "ok"


def test_unknown_job_ids_and_runs_are_one_clear_line(sqlite_project):
    p = sqlite_project
    p.sweep("known", "true", 1)
    p.jq("enqueue", "known", check=True)
    for args, message in [
        (["logs", "999"], "no job with id 999"),
        (["cancel", "998", "999"], "no job with id 998, 999"),
        (["retry", "999"], "no job with id 999"),
        (["cancel", "unknown-run"], "no run named 'unknown-run'"),
        (["resume", "unknown-run"], "no run named 'unknown-run'"),
        (["list", "--state", "sleeping"], "--state sleeping: unknown state"),
        (["logs", "1"], "job 1 has not run yet"),
    ]:
        proc = p.jq(*args)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert p.states() == {"queued": 1}


def test_an_idle_worker_waits_out_its_lease_of_contact_to_reap_a_silent_worker_before_it_exits(project):
    """A reaper judges others by heartbeat only after a lease in contact with the DB; a new worker with nothing to
    claim stays that long for a silent worker's jobs, requeues them and runs them, instead of leaving them running."""
    project.sweep("held", "sh -c 'if [ \"$JQ_ATTEMPT\" = 1 ]; then sleep 120; fi' job", 1)
    project.jq("enqueue", "held", check=True)
    timing = ["--heartbeat", "0.5", "--lease", "3"]
    stopped = project.start("worker", *timing, "--quiet")
    try:
        project.wait_for(lambda: project.states() == {"running": 1}, what="the job to start")
        stopped.send_signal(signal.SIGSTOP)
        time.sleep(4)  # past its lease: silent, but its process is there, so only the lease finds it lost
        idle = project.jq("worker", *timing, "--quiet", timeout=60)
        assert idle.returncode == 0, idle.stderr
        assert project.states() == {"succeeded": 1}, idle.stderr
        attempts = project.sql("select number, state from attempts order by number")
        assert attempts == [{"number": 1, "state": "lost"}, {"number": 2, "state": "succeeded"}]
    finally:
        stopped.send_signal(signal.SIGCONT)
        stopped.kill()
        stopped.communicate(timeout=30)


def test_a_bug_in_the_worker_loop_stops_the_worker_kills_its_jobs_and_hands_them_back(project):
    """The loop thread watches every job: if it dies of an exception, nothing watches them. The worker says why,
    kills them, requeues them as it signs off and exits non-zero, long before the jobs would have ended."""
    project.sweep("bug", """sh -c '[ "$1" = "--i=0" ] || [ -n "$QUICK" ] || sleep 60' job""", 3)
    project.jq("enqueue", "bug", check=True)
    start = time.monotonic()
    worker = project.jq("worker", "--slots", "3", env=project.env(JQ_CRASH_AT="after_exit:raise"), timeout=60)
    assert time.monotonic() - start < 30
    assert worker.returncode == 3
    assert "RuntimeError: fault injected at after_exit" in worker.stderr
    assert "requeued jobs 1, 2, 3: its worker crashed" in worker.stderr, worker.stderr
    assert job_processes(project.db) == []
    assert project.states() == {"queued": 3}
    project.jq("worker", "--slots", "3", env=project.env(QUICK="1"), check=True)
    assert project.states() == {"succeeded": 3}
