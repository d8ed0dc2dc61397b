"""A worker on another host cut off from PostgreSQL by a network partition, while two others go on.

The partition is a TCP proxy of the test's own between that worker and a PostgreSQL server of this module's own
(tests/services.py), so the session's server is never cut. The cut-off worker runs in a UTS namespace of its own
(benchmarks/chaos.py's Host): to the other workers it is on another machine, found lost by its lease, not its PID.
"""

import os
import signal
import subprocess
import sys
import time
from itertools import count

import psycopg
import pytest

from benchmarks.chaos import JOB as CHAOS_JOB, Host
from tests.conftest import Project, started_postgres
from tests.services import TcpProxy
from tests.test_worker import job_processes

LEASE = 3.0
HEARTBEAT = 0.5
GRACE = 1.0
JOB_SECONDS = 8  # longer than the lease: a cut-off job is still running when its lease runs out, unless fenced
# Each attempt holds an exclusive lock on its job's file while it runs; one that finds it taken fails loudly.
JOB = (
    "sh -c 'exec 9>>locks/$JQ_JOB_ID; "
    """flock -n 9 || { echo "$JQ_JOB_ID $JQ_ATTEMPT $(hostname) OVERLAP" >> overlaps; exit 3; }; """
    """echo "$JQ_JOB_ID $JQ_ATTEMPT $(hostname) start" >> ledger; sleep $0; """
    """echo "$JQ_JOB_ID $JQ_ATTEMPT $(hostname) end" >> ledger' """
    f"{JOB_SECONDS}"
)
WORKER = [
    "worker",
    "--slots",
    "2",
    "--lease",
    str(LEASE),
    "--heartbeat",
    str(HEARTBEAT),
    "--grace",
    str(GRACE),
    "--reap-every",
    "0.5",
]
_databases = count()


@pytest.fixture(scope="module")
def partition_server(tmp_path_factory):
    """A PostgreSQL server for this module alone, reached over TCP (which the proxy can cut)."""
    server = started_postgres(tmp_path_factory, "pg-partition")
    yield server
    server.stop()


@pytest.fixture
def pg_project(tmp_path, partition_server) -> Project:
    """A project on the module's server, through TCP (a role with a password: TCP asks every role for one)."""
    n = next(_databases)
    return Project(tmp_path, partition_server.create_password_role(f"jq_part_{n}", f"pw{n}", f"jq_part_{n}"))


@pytest.fixture
def partition(pg_project, partition_server):
    """The project, and a proxy to its server: (project, the URL through the proxy, the proxy)."""
    proxy = TcpProxy(partition_server.port)
    yield pg_project, pg_project.db.replace(f":{partition_server.port}/", f":{proxy.port}/"), proxy
    proxy.close()


def attempts_on(project: Project, host: str) -> list[int]:
    """The attempts running on `host`, read with psycopg: `jq sql`, a subprocess, takes a second on a busy machine."""
    with psycopg.connect(project.db.replace("postgresql+psycopg", "postgresql")) as conn:
        return [r[0] for r in conn.execute("select id from attempts where host = %s and state = 'running'", [host])]


def wait_ended(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except Exception:
            proc.kill()
            raise


@pytest.mark.parametrize("drop", [False, True], ids=["held", "dropped"])
def test_a_worker_cut_off_for_two_leases_has_its_jobs_fenced_requeued_and_its_late_results_refused(partition, drop):
    project, proxied_url, proxy = partition
    project.sweep("part", JOB, 8)
    project.jq("enqueue", "part", check=True)
    (project.path / "locks").mkdir()
    logs = {name: open(project.path / f"{name}.log", "w") for name in ("a", "b", "cutoff")}
    # Their output to files: Project.start's pipes, unread until the end, could fill up and stall a chatty worker.
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "jobqueue", *WORKER],
            cwd=project.path,
            env=project.env(),
            stdout=logs[n],
            stderr=logs[n],
        )
        for n in ("a", "b")
    ]
    cutoff = Host(
        "cutoff",
        [sys.executable, "-m", "jobqueue", *WORKER],
        cwd=project.path,
        env=project.env(JQ_DB=proxied_url),
        stdout=logs["cutoff"],
        stderr=logs["cutoff"],
    )

    def log() -> str:
        return "\n".join(f"--- {n}:\n{(project.path / f'{n}.log').read_text()[-3000:]}" for n in logs)

    try:
        # Both of its slots busy with jobs begun a moment ago, which run on well past the lease unless fenced.
        project.wait_for(lambda: len(attempts_on(project, "cutoff")) == 2, what="2 jobs on cutoff", diagnose=log)
        assert job_processes(proxied_url), "the cut-off worker's jobs are found by the URL they were given"
        proxy.cut(drop=drop)
        cut_at = time.monotonic()
        caught = attempts_on(
            project, "cutoff"
        )  # what it was running when cut: the DB cannot hear otherwise until the heal
        assert len(caught) == 2, caught
        # A reaper may requeue them once the cut-off worker's last heartbeat, sent before the cut, is a lease old.
        time.sleep(max(0.0, cut_at + LEASE - 0.2 - time.monotonic()))
        left = job_processes(proxied_url)
        assert left == [], f"cutoff's jobs still running {time.monotonic() - cut_at:.1f} s into the cut\n{log()}"
        time.sleep(max(0.0, cut_at + 2 * LEASE - time.monotonic()))
        proxy.heal()

        project.wait_for(lambda: project.states() == {"succeeded": 8}, timeout=120, what="all jobs", diagnose=log)
        wait_ended([*workers, cutoff.proc], timeout=60)
    finally:
        for proc in [*workers, cutoff.proc]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        wait_ended([*workers, cutoff.proc], timeout=60)
        for f in logs.values():
            f.close()

    assert not (project.path / "overlaps").exists(), (project.path / "overlaps").read_text()
    attempts = project.sql("select id, job_id, host, state, reason, started_at, ended_at from attempts order by id")
    succeeded = [a["job_id"] for a in attempts if a["state"] == "succeeded"]
    assert sorted(succeeded) == sorted({a["job_id"] for a in attempts}), attempts  # each job once
    fenced = [a for a in attempts if a["id"] in caught]
    # Their late results were refused: lost (the reaper's word) or interrupted (the worker's, back in contact).
    assert {a["state"] for a in fenced} <= {"lost", "interrupted"}, fenced
    # ... and they ran elsewhere, on the two hosts that kept their contact.
    reran = [a for a in attempts if a["job_id"] in {f["job_id"] for f in fenced} and a["state"] == "succeeded"]
    assert len(reran) == 2 and {a["host"] for a in reran} == {os.uname().nodename}, attempts
    ends = [line.split() for line in (project.path / "ledger").read_text().splitlines() if line.endswith(" end")]
    assert not [e for e in ends if e[2] == "cutoff" and int(e[0]) in {f["job_id"] for f in fenced}], ends
    assert job_processes(project.db) == [] and job_processes(proxied_url) == []


def test_a_host_stopped_past_its_lease_is_found_lost_by_its_lease_and_its_late_results_are_refused(pg_project):
    """benchmarks/chaos.py --hosts in small: two hosts, one SIGSTOPped past its lease and woken again."""
    project = pg_project
    # The chaos benchmark's job, 2 s each: shorter than the lease, so host-a's jobs end while it is stopped.
    project.write(
        "hosts.py",
        f"""
        from jobqueue import Experiment, ParamList, RunDescription
        RUN_DESCRIPTION = RunDescription("hosts", experiments=[
            Experiment("c", {CHAOS_JOB!r}, ParamList([{{"sleep": 2.0, "k": i}} for i in range(10)]).generate_params()),
        ])
        """,
    )
    project.jq("enqueue", "hosts", check=True)
    (project.path / "locks").mkdir()
    logs = {name: open(project.path / f"{name}.log", "w") for name in ("host-a", "host-b")}
    hosts = {
        name: Host(
            name,
            [sys.executable, "-m", "jobqueue", *WORKER],
            cwd=project.path,
            env=project.env(),
            stdout=log,
            stderr=log,
        )
        for name, log in logs.items()
    }
    a = hosts["host-a"].proc

    def log() -> str:
        return "\n".join(f"--- {n}:\n{(project.path / f'{n}.log').read_text()[-3000:]}" for n in logs)

    try:
        project.wait_for(lambda: len(attempts_on(project, "host-a")) == 2, what="2 jobs on host-a", diagnose=log)
        os.killpg(a.pid, signal.SIGSTOP)  # its worker; its jobs, in groups of their own, run on to their ends
        caught = attempts_on(project, "host-a")
        time.sleep(LEASE + 1.5)
        os.killpg(a.pid, signal.SIGCONT)
        project.wait_for(lambda: project.states() == {"succeeded": 10}, timeout=120, what="all jobs", diagnose=log)
        wait_ended([h.proc for h in hosts.values()], timeout=60)
    finally:
        for host in hosts.values():
            if host.proc.poll() is None:
                os.killpg(host.proc.pid, signal.SIGCONT)
                host.proc.terminate()
        wait_ended([h.proc for h in hosts.values()], timeout=60)
        for f in logs.values():
            f.close()

    assert a.returncode == 3, log()  # woken, it found itself declared lost, stopped and said so
    attempts = project.sql("select id, job_id, host, state, reason from attempts order by id")
    caught_attempts = [x for x in attempts if x["id"] in caught]
    # Found lost by its lease, from the other host: not by its PID, which host-b has no way to look at.
    assert len(caught_attempts) == 2 and all(
        x["state"] == "lost" and "no heartbeat for 3s" in x["reason"] for x in caught_attempts
    ), caught_attempts
    succeeded = sorted(x["job_id"] for x in attempts if x["state"] == "succeeded")
    assert succeeded == list(range(1, 11)), attempts  # each job once: the late results of host-a were refused
    rerun = [x for x in attempts if x["job_id"] in {c["job_id"] for c in caught_attempts} and x["state"] == "succeeded"]
    assert {x["host"] for x in rerun} == {"host-b"}, attempts
    ledger = (project.path / "ledger").read_text().splitlines()
    assert not [line for line in ledger if line.endswith("OVERLAP")], ledger
    assert job_processes(project.db) == []


def test_a_worker_frozen_while_its_jobs_run_has_them_killed_by_its_guard_before_its_lease_runs_out(pg_project):
    """SIGSTOP freezes the worker, not its jobs (process groups of their own) nor its guard (a session of its own):
    the worker cannot run its fence, and its jobs would run on past its lease, after which a reaper on another host
    requeues them. Its guard kills them once no heartbeat has come for lease - heartbeat. Woken, the worker records
    them interrupted by its guard and runs them again."""
    project = pg_project
    project.sweep("frozen", JOB, 2)
    project.jq("enqueue", "frozen", check=True)
    (project.path / "locks").mkdir()
    ledger = project.path / "ledger"
    worker = project.start(*WORKER)
    try:
        project.wait_for(lambda: ledger.exists() and len(ledger.read_text().splitlines()) == 2, what="both jobs")
        os.kill(worker.pid, signal.SIGSTOP)
        # JOB_SECONDS is longer than the lease: without the guard's deadline the jobs run on.
        project.wait_for(lambda: not job_processes(project.db), timeout=LEASE + 1.5, what="the guard to kill the jobs")
        time.sleep(1)
        os.kill(worker.pid, signal.SIGCONT)
        assert worker.wait(120) == 0, worker.stderr.read()
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait()
    attempts = project.sql("select job_id, number, state, reason from attempts order by id")
    assert [(a["number"], a["state"]) for a in attempts] == [(1, "interrupted")] * 2 + [(2, "succeeded")] * 2, attempts
    assert all("killed by its worker's guard" in a["reason"] for a in attempts[:2]), attempts
    assert project.states() == {"succeeded": 2}
    assert not [line for line in ledger.read_text().splitlines() if line.endswith("OVERLAP")]
