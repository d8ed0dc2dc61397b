"""Sharing one queue: racing claimers, lost workers on other hosts, the DB clock, and `jq db copy`."""

import json
import subprocess
import sys
import time

import sqlalchemy as sa

from benchmarks.claims import claim_race
from jobqueue import queue
from jobqueue.db import open_db
from jobqueue.models import jobs as jobs_table, workers as workers_table
from jobqueue.paths import SCHEMA_HEAD
from tests.conftest import refused


def test_eight_processes_claiming_two_thousand_jobs_never_take_one_twice(project):
    result = claim_race(project.db, processes=8, jobs=2000)
    assert result["errors"] == []
    assert (result["claimed"], result["distinct"], result["duplicates"]) == (2000, 2000, 0)


def test_a_worker_on_another_host_is_lost_only_after_its_lease_by_the_db_clock(project):
    project.sweep("remote", "true", 2)
    project.jq("enqueue", "remote", check=True)
    db = open_db(project.db)
    worker = queue.register_worker(db, slots=2, gpus=None, backend="processes", run_id=None)
    claimed = [queue.claim_next_job(db, worker, slot=i, gpus=None) for i in range(2)]
    assert all(claimed)
    # Pretend it runs on another host, and heartbeat with the DB's clock as any worker does.
    with db.begin() as c:
        c.execute(workers_table.update().values(host="far-away-host"))
    queue.heartbeat(db, worker.id, [])
    assert queue.find_dead_workers(db, lease=60) == []
    time.sleep(0.1)  # SQLite's clock counts milliseconds: a heartbeat of this same millisecond is not older than 0 s
    assert [w.id for w in queue.find_dead_workers(db, lease=0.05)] == [worker.id]
    from jobqueue.worker import reap

    assert sorted(reap(db, lease=0.0).requeued) == sorted(j.job_id for j in claimed)
    assert project.states() == {"queued": 2}
    # The lost worker comes back: its results are no longer its to record, and its heartbeat says so.
    from jobqueue.states import AttemptState

    assert queue.finish_attempt(db, claimed[0], worker.id, AttemptState.SUCCEEDED, exit_code=0) is None
    assert queue.heartbeat(db, worker.id, []) is None
    assert project.jq("worker", check=True).returncode == 0
    assert project.states() == {"succeeded": 2}


def test_copy_round_trip_keeps_the_whole_history(sqlite_project, postgres_server, tmp_path):
    p = sqlite_project
    p.sweep("moving", "sh -c 'echo hi; exit $(( $JQ_JOB_ID % 2 ))' job", 4)
    p.jq("launch", "moving", "--no-progress")
    before = json.loads(p.jq("list", "--json", check=True).stdout)
    pg = postgres_server.create_database("jq_copy_target")
    out = p.jq("db", "copy", p.db, pg, check=True).stdout
    assert "copied 1 runs, 1 workers, 4 jobs, 0 submissions, 4 attempts" in out
    on_pg = json.loads(p.jq("list", "--json", "--db", pg, check=True).stdout)
    assert on_pg == before
    back = str(tmp_path / "back.db")
    p.jq("db", "copy", pg, back, check=True)
    assert json.loads(p.jq("list", "--json", "--db", back, check=True).stdout) == before
    again = p.jq("db", "copy", p.db, pg)
    refused(again, "already holds runs")
    # New rows after a copy get fresh ids (PostgreSQL's sequences were moved past the copied ones).
    p.sweep("moving", "sh -c 'echo hi' job", 6)
    p.jq("enqueue", "moving", "--db", pg, check=True)
    assert [j["id"] for j in json.loads(p.jq("list", "--json", "--db", pg, check=True).stdout)] == [1, 2, 3, 4, 5, 6]


def test_a_postgresql_url_without_psycopg_says_what_to_install(sqlite_project, tmp_path):
    blocker = tmp_path / "blocker"
    (blocker / "psycopg").mkdir(parents=True)
    (blocker / "psycopg" / "__init__.py").write_text("raise ImportError('psycopg is not installed')\n")
    env = sqlite_project.env(PYTHONPATH=str(blocker))
    proc = sqlite_project.jq("status", "--db", "postgresql+psycopg://nobody@/nowhere", env=env)
    assert proc.returncode == 2
    assert 'pip install "jobqueue[postgres]"' in proc.stderr and proc.stderr.count("\n") == 1


def test_migrations_run_under_the_advisory_lock_from_many_processes_at_once(postgres_server):
    url = postgres_server.create_database("jq_migrate_race")
    code = "import sys; from jobqueue.db import open_db; open_db(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(10)]
    assert [p.wait(60) for p in procs] == [0] * 10, [p.stderr.read() for p in procs]
    db = open_db(url)
    with db.begin(write=False) as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalars().all() == [SCHEMA_HEAD]
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar() == 0


def test_slot_threads_finishing_and_claiming_at_once_each_get_their_own_job(project):
    # On SQLite the threads of one worker commit as a group: one thread runs the others' claims and finishes in
    # its transaction. Each thread must still get back exactly what it asked for.
    import threading

    from jobqueue.states import AttemptState, JobState

    project.sweep("group", "true", 400)
    project.jq("enqueue", "group", check=True)
    db = open_db(project.db)
    worker = queue.register_worker(db, slots=8, gpus=None, backend="processes", run_id=None)
    taken: dict[int, list] = {slot: [] for slot in range(8)}
    states: list = []
    start = threading.Barrier(8)

    def slot_loop(slot: int) -> None:
        start.wait()
        job = queue.claim_next_job(db, worker, slot=slot, gpus=None)
        while job is not None:
            taken[slot].append(job)
            ended = queue.Finished(job, AttemptState.SUCCEEDED, exit_code=0, pid=1000 + slot)
            (state,), jobs = queue.finish_then_claim(db, [ended], worker, [(slot, None)])
            states.append(state)
            job = jobs[0] if jobs else None

    threads = [threading.Thread(target=slot_loop, args=(slot,)) for slot in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = [j.job_id for slot_jobs in taken.values() for j in slot_jobs]
    assert sorted(jobs) == sorted(set(jobs)) and len(jobs) == 400
    assert states == [JobState.SUCCEEDED] * 400
    with db.begin(write=False) as c:
        rows = c.execute(sa.text("select id, job_id, slot, pid from attempts")).all()
    by_attempt = {r.id: r for r in rows}
    for slot, slot_jobs in taken.items():
        for job in slot_jobs:
            row = by_attempt[job.attempt_id]
            assert (row.job_id, row.slot, row.pid) == (job.job_id, slot, 1000 + slot)
    assert project.states() == {"succeeded": 400}
