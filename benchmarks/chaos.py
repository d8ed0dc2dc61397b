"""Chaos: workers (and launchers) killed at random while a sweep runs; then count what went wrong.

    python benchmarks/chaos.py [--jobs 200] [--workers 4] [--slots 2] [--kill-every 1-2] [--min-kills 100]

200 jobs each sleep a random 0.1-2 s and append `job attempt pid start end` to a ledger. Each job holds an
exclusive flock on a file of its own while it runs: an attempt that finds it taken writes OVERLAP, which is
exactly "two attempts of one job running at the same time" (the kernel frees the lock only when every
process holding it is gone). Every 1-2 s a random worker or launcher gets SIGKILL, SIGTERM, or
SIGSTOP+SIGCONT, and a new one starts. When a round's jobs are done and fewer than --min-kills kills have
happened, another round of jobs is enqueued. At the end `jq resume` runs until nothing is left. Prints:
jobs lost, jobs recorded as succeeded more than once, overlapping attempts, orphaned processes,
PRAGMA integrity_check, and attempts per job. Goal: 0, 0, 0, 0, ok.

    python benchmarks/chaos.py --db postgresql+psycopg://... --hosts [--lease 3] [--freeze-whole-host]

--db runs it on an empty PostgreSQL database. --hosts (root: unshare) makes every worker a host of its own, a UTS
namespace with its own hostname, so workers judge each other by the lease as across machines, never by PID; two
host faults join the draw: host-stop (SIGSTOP the host's worker, past its lease, and SIGCONT it a moment later) and
host-kill (SIGKILL every process of the host, its jobs and the worker's guard included: a power cut).
--freeze-whole-host makes host-stop stop the host's jobs too; no lease can tell a frozen job from a finished
one, so overlaps are expected there (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

JOB = (
    """sh -c 'exec 9>>locks/$JQ_JOB_ID; flock -n 9 || echo "$JQ_JOB_ID $JQ_ATTEMPT $$ OVERLAP" >> ledger; """
    """s=$(date +%s.%N); sleep ${1#--sleep=}; echo "$JQ_JOB_ID $JQ_ATTEMPT $$ $s $(date +%s.%N)" >> ledger' job"""
)

SWEEP = """
import random
from jobqueue import Experiment, ParamList, RunDescription
rng = random.Random({seed})
RUN_DESCRIPTION = RunDescription("{run}", experiments=[
    Experiment("c", {job!r}, ParamList([{{"sleep": round(rng.uniform(0.1, 2.0), 2), "k": i}} for i in range({jobs})]).generate_params(randomize=False)),
])
"""


def jq(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobqueue", *args]


class Host:
    """A process started as if on another machine: in a UTS namespace of its own (root only), so it and everything
    it starts see `name` as the hostname, and in a session of its own. A reaper on a "host" of another name cannot
    find its processes by PID and must go by the lease, as across real machines."""

    def __init__(self, name: str, argv: list[str], **popen):
        self.name = name
        # Its pid is argv's: unshare and sh exec.
        self.proc = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv],
            start_new_session=True,
            **popen,
        )
        ours = os.readlink("/proc/self/ns/uts")
        self.namespace = ours
        while self.namespace == ours:  # until unshare has made the new one: signal_host must never reach ours
            try:
                self.namespace = os.readlink(f"/proc/{self.proc.pid}/ns/uts")
            except OSError:
                raise RuntimeError(f"host {name}: {argv[0]} ended at once (exit {self.proc.wait()})") from None
            if self.proc.poll() is not None:
                raise RuntimeError(f"host {name}: unshare failed (exit {self.proc.returncode}); it needs root")
            time.sleep(0.005)

    def processes(self) -> list[int]:
        """Every live process of the host, the jobs and the worker's guard included (in process groups and sessions
        of their own), and those its worker left behind when it died."""
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink(f"/proc/{name}/ns/uts") == self.namespace:
                        found.append(int(name))
                except OSError:
                    continue
        return found

    def signal(self, sig: int) -> int:
        """Send `sig` to every process of the host, again until no new one appears (one may fork meanwhile)."""
        sent: set[int] = set()
        while True:
            new = [pid for pid in self.processes() if pid not in sent]
            if not new:
                return len(sent)
            for pid in new:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            sent.update(new)


def job_processes(db_url: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("JQ_DB") == db_url and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def run_chaos(
    work: Path,
    *,
    jobs: int = 200,
    workers: int = 4,
    slots: int = 2,
    kill_every=(1.0, 2.0),
    min_kills: int = 100,
    seed: int = 0,
    db_url: str | None = None,
    hosts: bool = False,
    lease: float = 3.0,
    freeze_whole_host: bool = False,
    say=print,
) -> dict:
    """With hosts, every worker is a host of its own (Host) with a --lease of `lease`, and two more faults join
    the draw: host-stop (SIGSTOP its worker's process group past its lease, SIGCONT it later; with
    freeze_whole_host, every process of the host) and host-kill (SIGKILL every process of the host)."""
    from jobqueue.db import open_db

    rng = random.Random(seed)
    (work / "locks").mkdir(parents=True, exist_ok=True)
    sqlite_file = str(work / "chaos.db") if db_url is None else None
    db_url = db_url or f"sqlite:///{sqlite_file}"
    env = {**os.environ, "JQ_DB": sqlite_file or db_url}
    worker_args = ["--slots", str(slots), "--grace", "2", "--reap-every", "1", "--heartbeat", "0.5", "--quiet"]
    if hosts:  # a short lease, so that hosts stopped past it are many; a grace within the fence's margin
        worker_args = ["--slots", str(slots), "--grace", "1", "--reap-every", "0.5", "--heartbeat", "0.5", "--quiet"]
        worker_args += ["--lease", str(lease)]
    faults = ["SIGKILL", "SIGTERM", "SIGSTOP"] + (["host-stop", "host-kill"] if hosts else [])
    rounds = 0
    hosts_started = 0

    def enqueue_round() -> str:
        nonlocal rounds
        run = f"chaos{rounds}"
        (work / f"{run}.py").write_text(SWEEP.format(seed=seed * 1000 + rounds, run=run, job=JOB, jobs=jobs))
        subprocess.run(jq("enqueue", run), cwd=work, env=env, check=True, capture_output=True)
        rounds += 1
        return run

    def start(run: str) -> subprocess.Popen:
        nonlocal hosts_started
        quiet = dict(cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if hosts:  # a new name each time: a host that comes back is judged by its lease, never by a PID
            hosts_started += 1
            host = Host(f"chaos-host{hosts_started}", jq("worker", *worker_args), **quiet)
            by_pid[host.proc.pid] = host
            return host.proc
        # A quarter of them are launchers (enqueue + in-process worker), the rest plain workers.
        args = (
            jq("launch", run, "--max-parallel", str(slots), "--grace", "2", "--no-progress")
            if rng.random() < 0.25
            else jq("worker", *worker_args)
        )
        return subprocess.Popen(args, **quiet)

    def signal_stopped(proc: subprocess.Popen, sig: int) -> None:
        if freeze_whole_host:
            by_pid[proc.pid].signal(sig)
        else:
            os.killpg(proc.pid, sig)  # the worker's group: its jobs and its guard sit in groups of their own

    run = enqueue_round()
    db = open_db(db_url, create=False)

    def unfinished() -> int:
        query = "select count(*) from jobs where state in ('queued', 'running')"
        return db.transact(lambda tx: tx.one(query), write=False)[0]

    by_pid: dict[int, Host] = {}
    procs = [start(run) for _ in range(workers)]
    stopped: dict[int, float] = {}  # host-stopped workers' pids: when they get SIGCONT
    kills: Counter = Counter()
    started = time.monotonic()
    while True:
        time.sleep(rng.uniform(*kill_every))
        for pid, due in list(stopped.items()):
            if time.monotonic() >= due:
                signal_stopped(next(p for p in procs if p.pid == pid), signal.SIGCONT)
                del stopped[pid]
        remaining = unfinished()
        if remaining == 0 and not stopped:
            if sum(kills.values()) >= min_kills:
                break
            run = enqueue_round()
        awake = [i for i, p in enumerate(procs) if p.pid not in stopped]
        if not awake:
            continue
        victim = rng.choice(awake)
        proc = procs[victim]
        how = rng.choice(faults)
        if proc.poll() is None:
            if how == "SIGSTOP":
                proc.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(0.2, 1.5))
                proc.send_signal(signal.SIGCONT)
            elif how == "host-stop":
                signal_stopped(proc, signal.SIGSTOP)
                stopped[proc.pid] = time.monotonic() + lease + rng.uniform(0.5, 2.0)
            elif how == "host-kill":
                by_pid[proc.pid].signal(signal.SIGKILL)
                proc.wait(15)
                procs[victim] = start(run)
            else:
                proc.send_signal(getattr(signal, how))
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                procs[victim] = start(run)
            kills[how] += 1
        else:
            procs[victim] = start(run)
        # Workers exit when the queue is drained (and a host-stopped one, found lost, when it wakes); keep the pool full.
        procs = [p if p.poll() is None else start(run) for p in procs]
        if sum(kills.values()) % 10 == 0:
            say(
                f"  {sum(kills.values())} kills ({dict(kills)}), {remaining} jobs unfinished, {time.monotonic() - started:.0f} s"
            )
    for proc in procs:
        if proc.poll() is None:
            if proc.pid in stopped:
                signal_stopped(proc, signal.SIGCONT)
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    resumes = 0
    while unfinished() and resumes < 5:
        subprocess.run(jq("resume", "--no-progress"), cwd=work, env=env, capture_output=True, timeout=600)
        resumes += 1
    subprocess.run(jq("resume", "--requeue-only"), cwd=work, env=env, capture_output=True, timeout=600)
    try:
        return summarize(work, db, sqlite_file, kills, rounds, resumes, time.monotonic() - started)
    finally:
        db.dispose()


def summarize(
    work: Path, db, sqlite_file: str | None, kills: Counter, rounds: int, resumes: int, seconds: float
) -> dict:
    def rows(query: str) -> list:
        return db.transact(lambda tx: tx.all(query), write=False)

    states = dict(rows("select state, count(*) from jobs group by state"))
    total = rows("select count(*) from jobs")[0][0]
    recorded = rows("select job_id, count(*) from attempts where state = 'succeeded' group by job_id")
    per_job = Counter(n for (n,) in rows("select count(*) from attempts group by job_id"))
    lost_detail = rows(
        "select j.id, j.state, a.number, a.state, a.exit_code, a.signal, a.reason from jobs j "
        "left join attempts a on a.job_id = j.id where j.state != 'succeeded' order by j.id, a.number"
    )
    integrity = "-"  # PostgreSQL has no such check
    if sqlite_file is not None:
        with sqlite3.connect(sqlite_file, timeout=30) as conn:
            integrity = conn.execute("pragma integrity_check").fetchone()[0]
    executions: Counter = Counter()
    overlaps = 0
    for line in (work / "ledger").read_text().splitlines():
        parts = line.split()
        if parts[-1] == "OVERLAP":
            overlaps += 1
        else:
            executions[int(parts[0])] += 1
    return {
        "jobs": total,
        "rounds": rounds,
        "kills": dict(kills),
        "kill_count": sum(kills.values()),
        "seconds": round(seconds, 1),
        "lost": total - states.get("succeeded", 0),
        "recorded_twice": sum(1 for _, n in recorded if n > 1),
        "overlapping": overlaps,
        "orphans": len(job_processes(db.url)),
        "integrity": integrity,
        "attempts_per_job": dict(sorted(per_job.items())),
        "ran_more_than_once": sum(1 for n in executions.values() if n > 1),
        "resumes": resumes,
        "lost_detail": lost_detail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--kill-every", default="1-2", help="seconds between kills, a range like 1-2")
    parser.add_argument("--min-kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="a PostgreSQL URL of an empty database (default: an SQLite file of its own)")
    parser.add_argument("--hosts", action="store_true", help="each worker a host of its own; host faults too (root)")
    parser.add_argument("--lease", type=float, default=3.0, help="with --hosts: the workers' --lease")
    parser.add_argument(
        "--freeze-whole-host", action="store_true", help="host-stop stops every process of the host, jobs included"
    )
    args = parser.parse_args()
    low, high = (float(x) for x in args.kill_every.split("-"))
    with tempfile.TemporaryDirectory() as tmp:
        r = run_chaos(
            Path(tmp),
            jobs=args.jobs,
            workers=args.workers,
            slots=args.slots,
            kill_every=(low, high),
            min_kills=args.min_kills,
            seed=args.seed,
            db_url=args.db,
            hosts=args.hosts,
            lease=args.lease,
            freeze_whole_host=args.freeze_whole_host,
            say=lambda line: print(line, flush=True),
        )
    where = ("PostgreSQL" if args.db else "SQLite") + (
        f", each worker a host, --lease {args.lease:g}" if args.hosts else ""
    )
    print(
        f"{r['jobs']} jobs in {r['rounds']} rounds of {args.jobs} on {where}, {args.workers} workers x {args.slots} slots, "
        f"{r['kill_count']} kills {r['kills']} in {r['seconds']} s, {r['resumes']} resume(s) at the end"
    )
    print(f"jobs lost (never succeeded):            {r['lost']}")
    for row in r["lost_detail"]:
        print(f"    job {row[0]} {row[1]}: attempt {row[2]} {row[3]} exit {row[4]} signal {row[5]} ({row[6]})")
    print(f"jobs recorded as succeeded twice:       {r['recorded_twice']}")
    print(f"overlapping attempts of one job:        {r['overlapping']}")
    print(f"orphaned job processes left:            {r['orphans']}")
    print(f"PRAGMA integrity_check:                 {r['integrity']}")
    print(f"attempts per job (attempts: jobs):      {json.dumps(r['attempts_per_job'])}")
    print(f"jobs executed more than once (at-least-once, expected after kills): {r['ran_more_than_once']}")


if __name__ == "__main__":
    main()
