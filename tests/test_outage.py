"""PostgreSQL goes down while three workers run jobs longer than the outage (issue 21).

A server of this module's own, stopped and started again (`pg_ctl stop -m fast`, as a failover or a maintenance
restart does): the session's server is everyone else's. With --lease 10, --heartbeat 0.5 and --grace 1, a worker
fences itself (stops its jobs) once it has recorded no heartbeat for lease - grace - heartbeat = 8.5 s, and an
outage shorter than lease - heartbeat - (grace + heartbeat) = 8 s, less the 0.5 s the first heartbeat after it may
wait for its retry, loses nothing (docs/reliability.md). The outage is timed from the stop to the end of the start.
Each job holds an exclusive flock on a file of its own while it runs, so two live attempts of one job would show.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Project, started_postgres

LEASE, HEARTBEAT, GRACE = 10.0, 0.5, 1.0
BOUND = LEASE - HEARTBEAT - (GRACE + HEARTBEAT)  # the longest outage that loses nothing
WORKER_ARGS = ["--slots", "2", "--lease", f"{LEASE:g}", "--heartbeat", f"{HEARTBEAT:g}", "--grace", f"{GRACE:g}"]
WORKER_ARGS += ["--reap-every", "1"]  # reapers look often: none may reap another for the outage

# Runs for its job's seconds (seconds.json, by job id), or (a pair) until a file is there and seconds more, holding an
# exclusive lock on its job's file, then leaves a mark of its attempt. A second live attempt of the job cannot take
# the lock: it says OVERLAP and fails.
THROUGH = ["outage-over", 1]  # runs through the outage, however long the workers took to start


def during(outage: float) -> list:
    return ["outage-began", outage / 2]  # ends in the middle of the outage


JOB = """
import fcntl, json, os, sys, time
job, attempt = os.environ["JQ_JOB_ID"], os.environ["JQ_ATTEMPT_ID"]
seconds = json.load(open("seconds.json"))[int(job) - 1]
os.makedirs("locks", exist_ok=True)
os.makedirs("marks", exist_ok=True)
lock = open(f"locks/{job}", "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    open(f"marks/OVERLAP-{job}-{attempt}", "w").close()
    sys.exit(f"OVERLAP: another attempt of job {job} holds its lock")
if isinstance(seconds, list):
    after, seconds = seconds
    while not os.path.exists(after):
        time.sleep(0.1)
time.sleep(seconds)
open(f"marks/{job}-{attempt}", "w").close()
"""


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory):
    """A server for this module alone, since its tests stop it."""
    server = started_postgres(tmp_path_factory, "pg-outage")
    started = time.monotonic()
    server.halt()
    server.start()
    restart_seconds[server.port] = time.monotonic() - started  # how long a stop and a start take here, now
    yield server
    server.stop()


_databases = iter(range(100))
restart_seconds: dict[int, float] = {}


def run_through_an_outage(server, tmp_path, outage: float, seconds: list):
    """Three workers x 2 slots run jobs of these lengths; once every slot runs one, the server is down for
    `outage` seconds. Returns the project, the workers' exit codes and their stderr, when all is done."""
    project = Project(tmp_path, server.create_database(f"outage_{next(_databases)}"))
    project.write("job.py", JOB)
    project.write("seconds.json", json.dumps(seconds))
    project.jq("enqueue", project.sweep("outage", "python job.py", len(seconds)), check=True)
    workers = [project.start("worker", *WORKER_ARGS) for _ in range(3)]
    try:
        project.wait_for(lambda: project.states().get("running") == 6, timeout=60, what="six jobs running")
        # The outage is from the moment the server stops answering until it answers again; starting takes a while.
        began = time.monotonic()
        server.halt()
        (project.path / "outage-began").touch()
        time.sleep(max(0.0, began + outage - restart_seconds[server.port] - time.monotonic()))
        server.start()
        took = time.monotonic() - began
        (project.path / "outage-over").touch()
        out = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert took < outage + 0.5, f"the outage took {took:.1f} s, not {outage:g} s: the machine is too busy to tell"
    return project, [w.returncode for w in workers], [err for _, err in out]


def attempts(project: Project) -> list[dict]:
    return project.sql("SELECT job_id, state, reason FROM attempts ORDER BY id")


def assert_each_job_succeeded_once(project: Project, jobs: int) -> list[dict]:
    rows = attempts(project)
    succeeded = sorted(r["job_id"] for r in rows if r["state"] == "succeeded")
    assert succeeded == sorted({r["job_id"] for r in rows}) and len(succeeded) == jobs, rows
    assert project.states() == {"succeeded": jobs}
    marks = sorted(p.name for p in (project.path / "marks").iterdir())
    assert not [m for m in marks if m.startswith("OVERLAP")], marks
    assert len(marks) == jobs, marks  # one attempt of each ran to its end
    return rows


def assert_said_once_and_calmly(stderr: list[str]) -> None:
    for err in stderr:
        assert "Traceback" not in err, err
        assert err.count("database unreachable since") == 1, err
        assert err.count("database back after") == 1, err


@pytest.mark.parametrize(
    "outage",
    [pytest.param(LEASE / 2, id="half-a-lease"), pytest.param(BOUND - 1.5, id="just-inside-the-bound")],
)
def test_an_outage_inside_the_bound_loses_nothing_and_kills_nothing(own_postgres, tmp_path, outage):
    # Three jobs run through the outage; three end during it, and their slots want new jobs meanwhile.
    jobs = [during(outage), THROUGH] * 3 + [1] * 3
    project, codes, stderr = run_through_an_outage(own_postgres, tmp_path, outage, jobs)
    assert codes == [0, 0, 0], stderr
    assert_said_once_and_calmly(stderr)
    rows = assert_each_job_succeeded_once(project, 9)
    assert len(rows) == 9, rows  # one attempt each: none was stopped, none requeued


def test_an_outage_past_the_bound_fences_the_jobs_and_each_still_succeeds_once(own_postgres, tmp_path):
    outage = LEASE - HEARTBEAT  # past the fence point (8.5 s after the last heartbeat) whatever the beat's phase
    project, codes, stderr = run_through_an_outage(own_postgres, tmp_path, outage, [THROUGH] * 6)
    assert codes == [0, 0, 0], stderr
    assert_said_once_and_calmly(stderr)
    for err in stderr:
        assert "no heartbeat recorded for" in err and "stopping its 2 jobs" in err, err
    rows = assert_each_job_succeeded_once(project, 6)
    stopped = [r for r in rows if r["state"] != "succeeded"]
    # Each job's first attempt was stopped by its own worker and recorded as such once the DB was back: no reaper
    # took them (they were all cut off alike), and no second attempt started before the first was gone (the locks).
    assert len(stopped) == 6 and {r["state"] for r in stopped} == {"interrupted"}, rows
    assert all("cut off from the database" in r["reason"] for r in stopped), rows


def test_jq_resume_and_the_watch_of_a_run_wait_through_an_outage_saying_so_once(own_postgres, tmp_path, capsys):
    import threading

    from jobqueue.db import open_db
    from jobqueue.launch import resume, watch_run

    project = Project(tmp_path, own_postgres.create_database(f"outage_{next(_databases)}"))
    project.jq("enqueue", project.sweep("quick", "true", 2), check=True)
    db = open_db(project.db)
    try:
        own_postgres.halt()
        threading.Timer(2, own_postgres.start).start()
        assert resume(db, None, requeue_only=True) == 0
        said = capsys.readouterr()
        assert "resume: 0 lost jobs requeued" in said.out
        assert said.err.count("jq: database unreachable since") == 1 and "jq: database back after" in said.err

        own_postgres.halt()

        def back_and_run():
            own_postgres.start()
            project.jq("worker", "--quiet", check=True)

        threading.Timer(2, back_and_run).start()
        assert watch_run(db, "quick", interval=0.2, progress=False) == 0
        said = capsys.readouterr()
        assert said.err.count("jq: database unreachable since") == 1 and "jq: database back after" in said.err
        assert "Traceback" not in said.err
        assert project.states() == {"succeeded": 2}
    finally:
        db.dispose()
