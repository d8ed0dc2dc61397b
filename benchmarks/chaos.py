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
    say=print,
) -> dict:
    rng = random.Random(seed)
    (work / "locks").mkdir(parents=True, exist_ok=True)
    db = str(work / "chaos.db")
    db_url = f"sqlite:///{db}"
    env = {**os.environ, "JQ_DB": db}
    worker_args = ["--slots", str(slots), "--grace", "2", "--reap-every", "1", "--heartbeat", "0.5", "--quiet"]
    rounds = 0

    def enqueue_round() -> str:
        nonlocal rounds
        run = f"chaos{rounds}"
        (work / f"{run}.py").write_text(SWEEP.format(seed=seed * 1000 + rounds, run=run, job=JOB, jobs=jobs))
        subprocess.run(jq("enqueue", run), cwd=work, env=env, check=True, capture_output=True)
        rounds += 1
        return run

    def start(run: str) -> subprocess.Popen:
        # A quarter of them are launchers (enqueue + in-process worker), the rest plain workers.
        args = (
            jq("launch", run, "--max-parallel", str(slots), "--grace", "2", "--no-progress")
            if rng.random() < 0.25
            else jq("worker", *worker_args)
        )
        return subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def unfinished() -> int:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("select count(*) from jobs where state in ('queued', 'running')").fetchone()[0]

    run = enqueue_round()
    procs = [start(run) for _ in range(workers)]
    kills = Counter()
    started = time.monotonic()
    while True:
        time.sleep(rng.uniform(*kill_every))
        remaining = unfinished()
        if remaining == 0:
            if sum(kills.values()) >= min_kills:
                break
            run = enqueue_round()
        victim = rng.randrange(len(procs))
        proc = procs[victim]
        how = rng.choice(["SIGKILL", "SIGTERM", "SIGSTOP"])
        if proc.poll() is None:
            if how == "SIGSTOP":
                proc.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(0.2, 1.5))
                proc.send_signal(signal.SIGCONT)
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
        # Workers exit when the queue is drained; keep the pool full.
        procs = [p if p.poll() is None else start(run) for p in procs]
        if sum(kills.values()) % 10 == 0:
            say(
                f"  {sum(kills.values())} kills ({dict(kills)}), {remaining} jobs unfinished, {time.monotonic() - started:.0f} s"
            )
    for proc in procs:
        if proc.poll() is None:
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
    return summarize(work, db, db_url, kills, rounds, resumes, time.monotonic() - started)


def summarize(work: Path, db: str, db_url: str, kills: Counter, rounds: int, resumes: int, seconds: float) -> dict:
    with sqlite3.connect(db, timeout=30) as conn:
        states = dict(conn.execute("select state, count(*) from jobs group by state").fetchall())
        total = conn.execute("select count(*) from jobs").fetchone()[0]
        recorded = conn.execute(
            "select job_id, count(*) from attempts where state = 'succeeded' group by job_id"
        ).fetchall()
        per_job = Counter(n for (n,) in conn.execute("select count(*) from attempts group by job_id"))
        integrity = conn.execute("pragma integrity_check").fetchone()[0]
        lost_detail = conn.execute(
            "select j.id, j.state, a.number, a.state, a.exit_code, a.signal, a.reason from jobs j "
            "left join attempts a on a.job_id = j.id where j.state != 'succeeded' order by j.id, a.number"
        ).fetchall()
    executions = Counter()
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
        "orphans": len(job_processes(db_url)),
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
        )
    print(
        f"{r['jobs']} jobs in {r['rounds']} rounds of {args.jobs}, {args.workers} workers x {args.slots} slots, "
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
