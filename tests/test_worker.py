"""Workers with real processes and signals: no job lost, run twice at once, or left running."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil
import pytest

from jobqueue.paths import without_password

# A job that appends "<job> start|end <time> <pid>" to a ledger around a short sleep.
LEDGER_JOB = """sh -c 'echo "$JQ_JOB_ID start $(date +%s.%N) $$" >> ledger; sleep 0.3; echo "$JQ_JOB_ID end $(date +%s.%N) $$" >> ledger' job"""


def read_ledger(path):
    events = []
    for line in path.read_text().splitlines():
        job, what, when, pid = line.split()
        events.append((float(when), 1 if what == "start" else -1, int(job), int(pid)))
    return sorted(events)


def max_concurrency(events) -> int:
    running = peak = 0
    for _, delta, _, _ in events:
        running += delta
        peak = max(peak, running)
    return peak


def overlapping_attempts(events) -> int:
    """Moments when two attempts of one job ran at the same time."""
    live: dict[int, int] = {}
    overlaps = 0
    for _, delta, job, _ in events:
        live[job] = live.get(job, 0) + delta
        overlaps += live[job] > 1
    return overlaps


def job_processes(db: str) -> list:
    """Live processes on this machine that a worker of this DB started (found by their environment, which holds the
    DB's URL without its password)."""
    bare = without_password(db)
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("JQ_DB", "").endswith(bare) and "JQ_ATTEMPT_ID" in env and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_two_workers_with_two_slots_run_twenty_jobs_each_once_and_never_more_than_four_at_a_time(project):
    project.sweep("ledger", LEDGER_JOB, 20)
    project.jq("enqueue", "ledger", check=True)
    (project.path / "train_dir").mkdir()
    workers = [project.start("worker", "--slots", "2") for _ in range(2)]
    assert [w.wait(120) for w in workers] == [0, 0], [w.stderr.read() for w in workers]
    events = read_ledger(project.path / "ledger")
    starts = [job for _, delta, job, _ in events if delta == 1]
    assert sorted(starts) == sorted(j["id"] for j in project.jobs())  # every job once, none twice
    assert max_concurrency(events) <= 4
    assert max_concurrency(events) >= 3  # and the slots were really used in parallel
    assert project.states() == {"succeeded": 20}
    attempts = project.sql(
        "select count(*) as n, count(distinct job_id) as jobs, min(exit_code) as lo, max(exit_code) as hi from attempts"
    )
    assert attempts == [{"n": 20, "jobs": 20, "lo": 0, "hi": 0}]


ENV_JOB = """sh -c 'echo "$CUDA_VISIBLE_DEVICES|$JQ_JOB_ID|$JQ_RUN|$JQ_ATTEMPT|$JQ_SLOT" > train_dir/env_$JQ_JOB_ID; sleep 0.2' job"""


def env_lines(project):
    return [
        (project.path / "train_dir" / name).read_text().strip()
        for name in sorted(os.listdir(project.path / "train_dir"))
        if name.startswith("env_")
    ]


@pytest.mark.parametrize(
    "gpu, inherited, expected",
    [
        ("0", None, {"0"}),
        ("0,1", None, {"0,1"}),
        ("none", "7", {"7"}),
        (None, None, {""}),
    ],
)
def test_cuda_visible_devices_follows_gpu(sqlite_project, gpu, inherited, expected):
    p = sqlite_project
    p.sweep("gpus", ENV_JOB, 4)
    p.jq("enqueue", "gpus", check=True)
    (p.path / "train_dir").mkdir()
    env = p.env(**({"CUDA_VISIBLE_DEVICES": inherited} if inherited else {}))
    p.jq("worker", "--slots", "2", *(["--gpu", gpu] if gpu else []), env=env, check=True)
    lines = env_lines(p)
    assert {line.split("|")[0] for line in lines} == expected
    assert {tuple(line.split("|")[2:4]) for line in lines} == {("gpus", "1")}
    assert {line.split("|")[4] for line in lines} <= {"0", "1"}


def test_experiments_per_gpu_pins_each_job_to_one_gpu_with_at_most_k_per_gpu(sqlite_project):
    p = sqlite_project
    job = """sh -c 'echo "$CUDA_VISIBLE_DEVICES start $(date +%s.%N)" >> train_dir/gpu_ledger; sleep 0.4; echo "$CUDA_VISIBLE_DEVICES end $(date +%s.%N)" >> train_dir/gpu_ledger' job"""
    p.sweep("pinned", job, 12)
    (p.path / "train_dir").mkdir()
    p.jq(
        "launch",
        "pinned",
        "--num-gpus",
        "3",
        "--experiments-per-gpu",
        "2",
        "--max-parallel",
        "8",
        "--no-progress",
        check=True,
    )
    per_gpu: dict[str, int] = {}
    peak: dict[str, int] = {}
    lines = sorted(
        (p.path / "train_dir" / "gpu_ledger").read_text().splitlines(), key=lambda row: float(row.split()[2])
    )
    for line in lines:
        gpu, what, _ = line.split()
        per_gpu[gpu] = per_gpu.get(gpu, 0) + (1 if what == "start" else -1)
        peak[gpu] = max(peak.get(gpu, 0), per_gpu[gpu])
    assert set(peak) == {"0", "1", "2"}
    assert max(peak.values()) == 2  # K per GPU, used fully, never more
    assert p.states() == {"succeeded": 12}


def test_sigterm_hands_running_jobs_back_and_leaves_nothing_running(project):
    project.sweep("slow", "sh -c 'sleep 30' job", 4)
    project.jq("enqueue", "slow", check=True)
    worker = project.start("worker", "--slots", "2", "--grace", "5")
    project.wait_for(lambda: project.states().get("running") == 2, what="two running jobs")
    project.wait_for(lambda: len(job_processes(project.db)) >= 2, what="job processes")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 128 + signal.SIGTERM
    assert project.states() == {"queued": 4}
    assert project.sql("select state, count(*) as n from attempts group by state") == [{"state": "interrupted", "n": 2}]
    assert job_processes(project.db) == []


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(sqlite_project):
    p = sqlite_project
    p.sweep("stubborn", """sh -c 'trap "" TERM; sleep 30' job""", 1)
    p.jq("enqueue", "stubborn", check=True)
    worker = p.start("worker", "--grace", "1")
    p.wait_for(lambda: len(job_processes(p.db)) >= 1, what="the job to start")
    time.sleep(0.3)
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    assert worker.wait(30) == 128 + signal.SIGINT
    assert 0.9 < time.monotonic() - started < 10
    assert job_processes(p.db) == []
    (attempt,) = p.sql("select state, signal from attempts")
    assert attempt == {"state": "interrupted", "signal": signal.SIGKILL}


# The first attempt leaves two children behind: one in the job's process group, one in a session of its own.
RESUMABLE_JOB = (
    """sh -c 'if [ "$JQ_ATTEMPT" = 1 ]; then sleep 60 & setsid sleep 61 & sleep 60; fi; echo done-$JQ_JOB_ID' job"""
)


def _crash_a_worker_mid_run(project) -> tuple[subprocess.Popen, psutil.Process]:
    """Three jobs running with their children, then the worker SIGKILLed; returns its guard, still alive."""
    project.sweep("crash", RESUMABLE_JOB, 3)
    project.jq("enqueue", "crash", check=True)
    worker = project.start("worker", "--slots", "3")
    project.wait_for(lambda: len(job_processes(project.db)) >= 12, what="jobs and their children")
    (guard,) = [p for p in psutil.Process(worker.pid).children() if "JQ_ATTEMPT_ID" not in p.environ()]
    assert guard.cmdline()[1:4] == ["-I", "-S", "-c"]  # its marks came down its pipe: JQ_DB may hold a password
    return worker, guard


def _resume_completes_every_job(project) -> None:
    proc = project.jq("resume", "--no-progress", check=True)
    assert "3 lost jobs requeued" in proc.stdout
    assert job_processes(project.db) == []
    assert project.states() == {"succeeded": 3}
    rows = project.sql("select job_id, number, state from attempts order by job_id, number")
    assert [r["state"] for r in rows] == ["lost", "succeeded"] * 3


def test_a_sigkilled_worker_takes_its_jobs_with_it_and_resume_completes_every_job(project):
    worker, guard = _crash_a_worker_mid_run(project)
    worker.kill()
    worker.wait(10)
    # The guard kills every process carrying the worker's marks, the child that left the job's session included.
    project.wait_for(lambda: job_processes(project.db) == [], what="the guard to kill the jobs", timeout=5)
    guard.wait(5)
    assert project.states() == {"running": 3}  # nobody has told the DB yet
    _resume_completes_every_job(project)


def test_when_worker_and_guard_are_both_killed_resume_kills_the_orphans_and_completes_every_job(project):
    worker, guard = _crash_a_worker_mid_run(project)
    guard.kill()
    project.wait_for(lambda: guard.status() == psutil.STATUS_ZOMBIE, what="the guard to die")  # its parent reaps it
    worker.kill()
    worker.wait(10)
    time.sleep(0.3)
    assert project.states() == {"running": 3}
    assert len(job_processes(project.db)) >= 12, "with no guard, the jobs run on unobserved until resume"
    _resume_completes_every_job(project)


def test_a_worker_that_ends_normally_sends_its_guard_away_without_killing_anything(project):
    # The guard acts only when its worker dies. After a normal exit it leaves without killing anything (a daemon
    # that left its job's session is `jq resume`'s business), and the job saw which worker ran it.
    project.sweep("daemon", "sh -c 'setsid sleep 30 & sleep 0.5; echo $JQ_WORKER_ID' job", 1)
    project.jq("enqueue", "daemon", check=True)
    project.jq("worker", check=True)
    (job,) = project.jobs()
    (worker,) = project.sql("select id from workers")
    assert project.jq("logs", str(job["id"]), check=True).stdout.strip() == str(worker["id"])
    time.sleep(0.5)
    daemons = job_processes(project.db)
    assert [p.cmdline() for p in daemons] == [["sleep", "30"]]
    guards = [
        p
        for p in psutil.process_iter(["cmdline", "cwd"])
        if (p.info["cmdline"] or [])[1:4] == ["-I", "-S", "-c"] and p.info["cwd"] == str(project.path)
    ]
    assert guards == []
    for p in daemons:
        p.kill()


def test_timeouts_are_recorded_as_timeout(project):
    project.sweep("timeouts", "sh -c 'sleep 30' job", 2, timeout=0.5)
    project.jq("enqueue", "timeouts", check=True)
    proc = project.jq("worker", "--slots", "2", "--grace", "1")
    assert proc.returncode == 1
    assert project.states() == {"timeout": 2}
    reasons = {r["reason"] for r in project.sql("select reason from attempts")}
    assert reasons == {"ran over its timeout of 0.5s"}


def test_a_value_with_spaces_and_quotes_arrives_as_one_argv_item(sqlite_project):
    p = sqlite_project
    value = """it's "quoted" $HOME; rm -rf /tmp/nothing & echo"""
    p.write(
        "quoting.py",
        f"""
        from jobqueue import Experiment, RunDescription
        RUN_DESCRIPTION = RunDescription("quoting", experiments=[
            Experiment("q", "python -c 'import sys, json; print(json.dumps(sys.argv[1:]))'", [{{"msg": {value!r}}}]),
        ])
    """,
    )
    p.jq("enqueue", "quoting", check=True)
    p.jq("worker", check=True)
    (job,) = p.jobs()
    log = p.jq("logs", str(job["id"]), check=True).stdout
    assert json.loads(log)[0] == f"--msg={value}"


def test_sample_factory_spellings_of_launch(sqlite_project):
    p = sqlite_project
    p.sweep("sfmod", ENV_JOB, 4)
    (p.path / "train_dir").mkdir()
    proc = p.jq(
        "launch",
        "--run=sfmod",
        "--backend=processes",
        "--max_parallel=2",
        "--pause_between=0",
        "--experiments_per_gpu=1",
        "--num_gpus=2",
        "--experiment_suffix=sfx",
        "--train_dir=./td",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert p.states("sfmod_sfx") == {"succeeded": 4}
    assert all("--train_dir=./td/sfmod/j_sfx" in j["cmd"] for j in p.jobs())
    gpus = {line.split("|")[0] for line in env_lines(p)}
    assert gpus == {"0", "1"}
    (run,) = p.sql("select settings from runs")
    settings = json.loads(run["settings"])
    assert (settings["max_parallel"], settings["experiments_per_gpu"], settings["num_gpus"]) == (2, 1, 2)


def test_failures_exit_non_zero_show_log_tails_and_retry_up_to_max_attempts(project):
    project.sweep(
        "flaky", """sh -c 'echo "attempt $JQ_ATTEMPT of $JQ_JOB_ID"; [ "$JQ_ATTEMPT" -ge 2 ] || exit 3' job""", 2
    )
    proc = project.jq("launch", "flaky", "--max-attempts", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert project.states() == {"succeeded": 2}
    assert [r["exit_code"] for r in project.sql("select exit_code from attempts order by job_id, number")] == [
        3,
        0,
        3,
        0,
    ]
    project.sweep("broken", "sh -c 'echo boom-line; exit 5' job", 1)
    proc = project.jq("launch", "broken", "--no-progress")
    assert proc.returncode == 1
    listing = project.jq("list", "--state", "failed", check=True).stdout
    assert "boom-line" in listing
    status = project.jq("status", "broken", check=True).stdout
    assert "exit code 5" in status and "boom-line" in status
    assert "1 jobs queued again" in project.jq("retry", "broken", check=True).stdout
    assert project.states("broken") == {"queued": 1}


def test_status_shows_each_runs_five_newest_failures_oldest_first(project):
    project.sweep("many", "sh -c 'echo many-$JQ_JOB_ID; exit 1' job", 7)
    project.sweep("few", "sh -c 'exit 2' job", 2)
    for run in ("many", "few"):
        assert project.jq("launch", run, "--no-progress").returncode == 1
    report = {r["run"]: r for r in json.loads(project.jq("status", "--json", check=True).stdout)["runs"]}
    many_ids = sorted(j["id"] for j in project.jobs("many"))
    assert [j["id"] for j in report["many"]["failed"]] == many_ids[2:]
    assert report["many"]["failed"][0]["tail"] == [f"many-{many_ids[2]}"]
    assert [j["exit_code"] for j in report["few"]["failed"]] == [2, 2]
    assert [
        j["id"] for j in json.loads(project.jq("status", "few", "--json", check=True).stdout)["runs"][0]["failed"]
    ] == sorted(j["id"] for j in project.jobs("few"))


def test_a_missing_command_fails_with_a_clear_reason_and_the_worker_goes_on(project):
    project.write(
        "mixed.py",
        """
        from jobqueue import Experiment, RunDescription
        RUN_DESCRIPTION = RunDescription("mixed", experiments=[
            Experiment("missing", "no-such-program-xyz --flag"),
            Experiment("fine", "true"),
        ])
    """,
    )
    project.jq("enqueue", "mixed", check=True)
    proc = project.jq("worker")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert {j["name"]: j["state"] for j in project.jobs()} == {"00_missing": "failed", "00_fine": "succeeded"}
    (attempt,) = project.sql("select reason, exit_code from attempts where exit_code != 0")
    assert attempt == {"reason": "command not found: no-such-program-xyz (not on PATH)", "exit_code": 127}


def test_cancel_stops_a_running_job_and_records_it(project):
    project.sweep("cancelme", "sh -c 'sleep 30' job", 3)
    project.jq("enqueue", "cancelme", check=True)
    worker = project.start("worker", "--slots", "1", "--heartbeat", "0.2", "--grace", "2")
    project.wait_for(lambda: project.states().get("running") == 1, what="a running job")
    out = project.jq("cancel", "cancelme", check=True).stdout
    assert "cancelled 3 jobs (1 were running)" in out
    worker.wait(30)
    assert project.states() == {"cancelled": 3}
    assert job_processes(project.db) == []
    assert [r["state"] for r in project.sql("select state from attempts")] == ["cancelled"]


def test_cancel_and_retry_take_more_job_ids_than_one_statement_takes(sqlite_project, monkeypatch):
    """A long list of ids goes into several statements. SQLite's limit is 32,766 parameters a statement by default
    (Debian builds it with 250,000); here the real DB's connections are given a limit of 999, to need few jobs."""
    import sqlite3

    from jobqueue import db as db_module, queue
    from jobqueue.errors import UserError

    p = sqlite_project
    p.sweep("wide", "true", 2_500)
    p.sweep("other", "true", 1)
    for run in ("wide", "other"):
        p.jq("enqueue", run, check=True)
    connect = db_module.connect_sqlite

    def limited(path, journal):
        conn = connect(path, journal)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(db_module, "connect_sqlite", limited)
    db = db_module.open_db(p.db)
    try:

        def states():
            rows = db.transact(
                lambda tx: tx.all(
                    "SELECT runs.name, state, count(*) FROM jobs JOIN runs ON runs.id = run_id GROUP BY 1, 2"
                ),
                write=False,
            )
            return {(run, state): n for run, state, n in rows}

        def ids(run):
            return [
                i
                for (i,) in db.transact(
                    lambda tx: tx.all(
                        "SELECT jobs.id FROM jobs JOIN runs ON runs.id = run_id WHERE runs.name = :run", {"run": run}
                    ),
                    write=False,
                )
            ]

        wide, (other,) = ids("wide"), ids("other")
        with pytest.raises(sqlite3.OperationalError, match="too many SQL variables"):  # the limit is in force
            db.transact(
                lambda tx: tx.cursor.execute(f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * 1000)})", wide[:1000]),
                write=False,
            )
        with pytest.raises(UserError, match="no job with id 999999"):
            queue.cancel_jobs(db, job_ids=wide + [999999])
        assert states() == {("wide", "queued"): 2_500, ("other", "queued"): 1}  # nothing changed
        assert queue.cancel_jobs(db, job_ids=wide) == (2_500, [])
        assert states() == {("wide", "cancelled"): 2_500, ("other", "queued"): 1}
        assert queue.retry_jobs(db, job_ids=wide[1:] + [other]) == 2_499  # the queued one is left as it is
        assert states() == {("wide", "cancelled"): 1, ("wide", "queued"): 2_499, ("other", "queued"): 1}
        assert queue.cancel_jobs(db, run="wide") == (2_499, [])
    finally:
        db.dispose()


def test_a_worker_for_a_run_that_does_not_exist_is_a_clear_error(sqlite_project):
    p = sqlite_project
    p.sweep("real", "true", 1)
    p.jq("enqueue", "real", check=True)
    p.fails("worker", "--run", "imaginary", says="no run named 'imaginary'")


def test_logs_follow_a_running_job_to_its_end(sqlite_project):
    p = sqlite_project
    p.sweep("chatty", "sh -c 'for i in 1 2 3; do echo line-$i; sleep 0.3; done' job", 1)
    p.jq("enqueue", "chatty", check=True)
    worker = p.start("worker")
    p.wait_for(lambda: p.states().get("running") == 1, what="the job to start")
    follow = p.jq("logs", "1", "-f", check=True, timeout=30).stdout
    assert follow.split() == ["line-1", "line-2", "line-3"]
    assert worker.wait(30) == 0


def test_a_heartbeat_racing_quick_jobs_never_stops_the_next_job_in_the_slot(sqlite_project):
    """A finished attempt looks 'no longer running' to the heartbeat; that must not cancel the slot's next job."""
    p = sqlite_project
    p.sweep("quick", "true", 300)
    p.jq("enqueue", "quick", check=True)
    p.jq("worker", "--slots", "2", "--heartbeat", "0.05", "--quiet", check=True, timeout=300)
    assert p.states() == {"succeeded": 300}


def test_a_job_signalled_together_with_its_worker_is_handed_back_not_failed(project):
    """A shutdown or scancel TERMs every process at once; the job may die a moment before the worker hears of it."""
    project.sweep("together", "sh -c 'sleep 30' job", 2)
    project.jq("enqueue", "together", check=True)
    worker = project.start("worker", "--slots", "2")
    project.wait_for(
        lambda: project.states().get("running") == 2 and len(job_processes(project.db)) >= 4,
        what="two jobs, each a shell and its sleep",
    )
    for pgid in {os.getpgid(proc.pid) for proc in job_processes(project.db)}:
        os.killpg(pgid, signal.SIGTERM)  # the jobs first...
    worker.send_signal(signal.SIGTERM)  # ...then their worker
    assert worker.wait(30) == 128 + signal.SIGTERM
    assert project.states() == {"queued": 2}
    assert {r["state"] for r in project.sql("select state from attempts")} == {"interrupted"}


def test_the_pid_is_recorded_while_a_job_runs_and_with_the_end_of_a_quick_one(project):
    # `jq cancel` signals a running job's group by the pid in its attempt; a quick job saves the transaction.
    project.sweep("pids", """sh -c 'echo $$; [ "$JQ_JOB_ID" = 1 ] && sleep 30; exit 0' job""", 2)
    project.jq("enqueue", "pids", check=True)
    worker = project.start("worker", "--slots", "2")
    pid_of = lambda job: project.sql(f"select pid from attempts where job_id = {job}")[0]["pid"]  # noqa: E731
    project.wait_for(lambda: project.states() == {"running": 1, "succeeded": 1}, what="the quick job to end")
    project.wait_for(lambda: pid_of(1), what="the running job's pid", timeout=5)
    for job in (1, 2):
        assert pid_of(job) == int(project.jq("logs", str(job), check=True).stdout.split()[0])
    project.jq("cancel", "1", check=True)
    assert worker.wait(30) == 0
    assert project.states() == {"cancelled": 1, "succeeded": 1}


def test_a_job_starts_in_its_own_group_with_devnull_stdin_default_signals_and_no_worker_descriptors(sqlite_project):
    # The job gets its own process group, stdin from /dev/null, SIGPIPE and SIGXFSZ not ignored (Python ignores both,
    # and an ignored signal survives exec), and none of the worker's descriptors, not even one the worker inherited
    # from whoever started it.
    p = sqlite_project
    probe = (
        "sh -c 'read pid comm state ppid pgrp rest < /proc/$$/stat; echo pgrp=$pgrp; echo pid=$$; "
        "echo stdin=$(readlink /proc/$$/fd/0); grep SigIgn /proc/$$/status; ls /proc/$$/fd' probe"
    )
    p.sweep("probe", probe, 1)
    p.jq("enqueue", "probe", check=True)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as a careless parent would leave it
    try:
        worker = subprocess.run(
            [sys.executable, "-m", "jobqueue", "worker"],
            cwd=p.path,
            env=p.env(),
            capture_output=True,
            text=True,
            timeout=60,
            close_fds=False,
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert worker.returncode == 0, worker.stderr
    (job,) = p.jobs()
    lines = p.jq("logs", str(job["id"]), check=True).stdout.replace("SigIgn:\t", "sigign=").splitlines()
    seen = {
        **dict(line.split("=", 1) for line in lines if "=" in line),
        "fds": [line for line in lines if line.isdigit()],
    }
    assert seen["pgrp"] == seen["pid"], seen
    assert seen["stdin"] == "/dev/null", seen
    assert not int(seen["sigign"], 16) & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), seen
    assert seen["fds"] == ["0", "1", "2"], (seen, write_end)


def test_a_worker_left_a_zombie_by_a_parent_that_never_waits_is_lost_and_resume_counts_every_orphan_it_kills(project):
    """The test is the worker's parent and does not wait() for it: SIGKILLed, it stays a zombie, whose /proc entry
    still carries the start time jq compares. It must count as dead all the same."""
    worker, guard = _crash_a_worker_mid_run(project)
    guard.kill()
    project.wait_for(lambda: guard.status() == psutil.STATUS_ZOMBIE, what="the guard to die")
    worker.kill()
    project.wait_for(lambda: psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE, what="a zombie worker")
    orphans = len(job_processes(project.db))
    assert orphans >= 12
    proc = project.jq("resume", "--requeue-only", check=True)
    assert psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE, "still unreaped while resume ran"
    assert f"3 lost jobs requeued, {orphans} orphaned job processes killed" in proc.stdout
    assert job_processes(project.db) == []
    assert project.states() == {"queued": 3}
    rows = project.sql(
        "select a.state, a.reason, a.started_at, a.ended_at, w.heartbeat_at from attempts a "
        "join workers w on w.id = a.worker_id"
    )
    for row in rows:
        assert row["state"] == "lost" and " lost: process " in row["reason"] and "; noticed at " in row["reason"]
        # It ended when its worker was last heard from, not when resume noticed.
        assert row["ended_at"] == max(row["heartbeat_at"], row["started_at"])
    worker.wait(5)
    _resume_completes_every_job_again(project)


def _resume_completes_every_job_again(project) -> None:
    project.jq("resume", "--no-progress", check=True)
    assert project.states() == {"succeeded": 3}


@pytest.mark.parametrize("libc", [True, False], ids=["posix_spawn", "popen"])
def test_both_ways_of_starting_a_job_give_it_its_group_directory_stdin_log_and_default_signals_alone(
    tmp_path, monkeypatch, libc
):
    """processes.start_job starts jobs by posix_spawn(3) where the C library has what it takes, else by Popen
    (glibc before 2.34): the job sees the same either way, and a program that is not there is an OSError."""
    from jobqueue import processes

    if libc:
        assert processes._posix_spawn() is not None, "this machine's C library should have posix_spawn's file actions"
    else:
        monkeypatch.setattr(processes, "_posix_spawn", lambda: None)
    probe = (
        "read pid comm state ppid pgrp rest < /proc/$$/stat; echo pgrp=$pgrp; echo pid=$$; echo cwd=$(pwd); "
        "echo stdin=$(readlink /proc/$$/fd/0); grep SigIgn /proc/$$/status; echo err >&2; ls /proc/$$/fd; exit 3"
    )
    (tmp_path / "work").mkdir()
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)  # as a careless parent would leave one
    env = {b"PATH": os.environb[b"PATH"]}
    try:
        job = processes.start_job(["sh", "-c", probe, "probe"], "/bin/sh", str(tmp_path / "work"), env, log, stdin)
        assert select.select([job.pidfd], [], [], 10)[0], "it never ended"
        assert job.reap() == 3
        with pytest.raises(OSError) as missing:
            processes.start_job(["/no/such/program"], None, str(tmp_path), env, log, stdin)
        assert missing.value.errno == 2  # ENOENT
    finally:
        for fd in (log, stdin, leak_r, leak_w):
            os.close(fd)
    lines = (tmp_path / "log").read_text().replace("SigIgn:\t", "sigign=").splitlines()
    seen = {**dict(line.split("=", 1) for line in lines if "=" in line), "fds": [x for x in lines if x.isdigit()]}
    assert seen["pgrp"] == seen["pid"] and seen["cwd"] == str(tmp_path / "work"), seen
    assert seen["stdin"] == "/dev/null" and "err" in lines, seen
    assert not int(seen["sigign"], 16) & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), seen
    assert seen["fds"] == ["0", "1", "2"], seen
