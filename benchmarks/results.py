"""Metrics: what the worker pays to store them, what `jq results` pays to compare them, each beside a reference.

    python benchmarks/results.py [--jobs 1000] [--points 1000] [--results-jobs 10000] [--big-points 100000]
                                 [--parts ingest,results,memory]

1. Ingestion: 1,000 jobs' JSON-lines files of 1,000 points each (500 lines of reward and loss) stored as the
   worker stores them (results.collect, SQLite), in CPU seconds; beside it, the same files read raw (a
   json.loads loop), read by jobqueue's reader without storing, and the same points inserted by a bare
   executemany into jq's schema: the worker's figure against the two references' sum.
2. `jq results` on 10,000 jobs x 5 metrics through the real CLI (Python start-up included; goal <= 0.5 s), as a
   table, sorted, as JSON and CSV, and grouped; beside it, the same query in the sqlite3 shell, and `python -c pass`.
3. A real `jq worker` storing a 100,000-point file while its job runs: its RSS then, against its RSS while idle
   with the job running (goal: within 10 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command as jq, keep_template_db_in, timed  # noqa: E402
from jobqueue import queue, results, sql  # noqa: E402
from jobqueue.db import open_db  # noqa: E402
from jobqueue.metrics import read_jsonl  # noqa: E402
from jobqueue.sweep import JobSpec  # noqa: E402

KEYS = ("reward", "loss", "fps", "entropy", "len")


def specs(n: int, cwd: str, run: str) -> list[JobSpec]:
    return [
        JobSpec(
            f"{i:05d}_j",
            "j",
            {"lr": [0.1, 0.01, 0.001, 3e-4][i % 4], "seed": i // 4},
            ["true"],
            "true",
            f"{run}/j_",
            os.path.join(cwd, run),
            index=i,
        )
        for i in range(n)
    ]


def claimed_jobs(db, run: str, n: int, cwd: str) -> list[queue.ClaimedJob]:
    queue.enqueue(db, run, specs(n, cwd, run), sweep=run, train_dir=cwd, cwd=cwd)
    worker = queue.register_worker(db, slots=1, gpus=None, backend="processes", run_id=None)
    return [queue.claim_next_job(db, worker, slot=0, gpus=None) for _ in range(n)]


def ingestion(cwd: str, jobs: int, points: int) -> None:
    db = open_db(os.path.join(cwd, "ingest.db"))
    claimed = claimed_jobs(db, "ingest", jobs, cwd)
    files = []
    for job in claimed:
        path = os.path.join(cwd, f"{job.job_id}.metrics.jsonl")
        with open(path, "w") as f:
            f.writelines(
                json.dumps({"step": 100 * s, "reward": s * 0.37, "loss": 1 / (s + 1), "wall_time": 1.7e9 + s}) + "\n"
                for s in range(points // 2)
            )
        files.append(path)
    megabytes = sum(os.path.getsize(p) for p in files) / 1e6

    def cpu(fn) -> tuple[float, float]:
        start, wall = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - start, time.perf_counter() - wall

    def raw():
        decode = json.loads
        for path in files:
            with open(path, "rb") as f:
                for line in f:
                    decode(line)

    def reader():
        for path in files:
            for _ in read_jsonl(path):
                pass

    def store():
        for job, path in zip(claimed, files):
            results.collect(
                db, job.job_id, job.attempt_id, experiment_dir=os.path.join(cwd, "ingest", job.name), metrics_file=path
            )

    # The same points, read, inserted by a bare executemany (a transaction per job) into a second DB with jq's
    # schema, jobs and attempts, and the pragmas jq sets: what storing costs the database itself.
    bare_db = open_db(os.path.join(cwd, "bare.db"))
    bare_jobs = claimed_jobs(bare_db, "ingest", jobs, cwd)
    bare_db.dispose()
    rows_per_job = [
        [(job.job_id, job.attempt_id, p.key, p.step, p.value, p.wall_time) for c in read_jsonl(path) for p in c.points]
        for job, path in zip(bare_jobs, files)
    ]

    def bare_inserts():
        conn = sqlite3.connect(os.path.join(cwd, "bare.db"), isolation_level=None)
        for pragma in ("foreign_keys=ON", "synchronous=NORMAL", "journal_mode=WAL"):
            conn.execute(f"PRAGMA {pragma}")
        for rows in rows_per_job:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(results._INSERT_POINTS, rows)
            conn.execute("COMMIT")
        conn.close()

    raw_cpu, _ = cpu(raw)
    read_cpu, _ = cpu(reader)
    insert_cpu, _ = cpu(bare_inserts)
    store_cpu, store_wall = cpu(store)
    (stored,) = db.transact(lambda tx: tx.first("SELECT count(*) FROM metric_points"), write=False)
    assert stored == jobs * points, stored
    print(f"ingest {jobs:,} jobs x {points:,} points ({megabytes:.0f} MB of JSON lines), SQLite:")
    print(
        f"  worker (results.collect):  {store_cpu:6.2f} CPU s ({store_wall:.2f} s wall), "
        f"{stored / store_cpu / 1e6:.2f} M points per CPU s; "
        f"{store_cpu / (raw_cpu + insert_cpu):.2f}x the two references together"
    )
    print(f"  jobqueue's reader alone:   {read_cpu:6.2f} CPU s")
    print(f"  raw json.loads loop:       {raw_cpu:6.2f} CPU s  (reference)")
    print(f"  bare executemany inserts:  {insert_cpu:6.2f} CPU s  (reference: the same points, jq's schema)")


def results_db(cwd: str, jobs: int, steps: int = 10) -> str:
    """A run of `jobs` finished jobs, each with KEYS logged at `steps` steps (summaries kept as ingestion keeps them)."""
    path = os.path.join(cwd, "results.db")
    db = open_db(path)
    queue.enqueue(db, "big", specs(jobs, cwd, "big"), sweep="big", train_dir=cwd, cwd=cwd)

    def attempts(tx):
        tx.execute("UPDATE jobs SET state = 'succeeded', attempts = 1")
        tx.executemany(
            "INSERT INTO attempts (job_id, number, host, state, started_at, ended_at, log_path) "
            "VALUES (?, 1, 'bench', 'succeeded', {now}, {now}, '')",
            [(i,) for i in range(1, jobs + 1)],
        )
        return tx.all("SELECT job_id, id FROM attempts ORDER BY job_id")

    def points(tx, rows):
        for job_id, attempt_id in rows:
            seed = job_id % 7
            results.add_points(
                tx,
                job_id,
                attempt_id,
                [
                    results.Point(key, 1000 * s, (s + seed) * (k + 1) * 0.1, 1.7e9 + s)
                    for s in range(steps)
                    for k, key in enumerate(KEYS)
                ],
            )

    rows = db.transact(attempts)
    for part in sql.chunks(rows, 1000):
        db.transact(lambda tx, part=part: points(tx, part))
    return path


# What `jq results big` reads, as one query the sqlite3 shell prints: each job's row and its metrics' summaries.
REFERENCE_QUERY = (
    "SELECT j.id, j.name, j.state, j.params, (SELECT sum((julianday(a.ended_at) - julianday(a.started_at)) * 86400.0) "
    "FROM attempts a WHERE a.job_id = j.id), m.key, m.last, m.last_step, m.min, m.max, m.count "
    "FROM jobs j LEFT JOIN metric_summaries m ON m.job_id = j.id WHERE j.run_id = 1 ORDER BY j.id"
)


def wall_and_cpu(argv: list[str], cwd: str, repeat: int = 5) -> str:
    """The median wall time and CPU time (user + system) of a command: on a loaded machine the CPU time is the
    steadier figure."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(timed(argv, cwd))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return f"{statistics.median(walls):.3f} s ({statistics.median(cpus):.3f} CPU s)"


def results_timing(cwd: str, jobs: int) -> None:
    db = results_db(cwd, jobs)
    run = jq() + ["results", "big", "--db", db]
    timed(run, cwd)  # bytecode and page cache
    print(f"jq results on {jobs:,} jobs x {len(KEYS)} metrics, whole commands (goal <= 0.5 s):")
    for what, argv in [
        ("table", run),
        ("--sort reward", run + ["--sort", "reward"]),
        ("--json", run + ["--json"]),
        ("--csv", run + ["--csv"]),
        ("--group-by lr --sort reward", run + ["--group-by", "lr", "--sort", "reward"]),
        ("jq status big", jq() + ["status", "big", "--db", db]),
        ("sqlite3 shell, the same query (reference)", ["sqlite3", db, REFERENCE_QUERY]),
        ("python -c pass (reference)", [sys.executable, "-c", "pass"]),
    ]:
        print(f"  {what + ':':44} {wall_and_cpu(argv, cwd)}")


BIG_JOB = """
import json, os, time
time.sleep({idle})
with open(os.environ["JQ_METRICS_FILE"], "a") as f:
    f.writelines(json.dumps({{"step": s, "reward": s * 0.5, "loss": 1.0 / (s + 1)}}) + "\\n" for s in range({lines}))
time.sleep({after})
"""


def worker_memory(cwd: str, points: int) -> None:
    import psutil

    db = os.path.join(cwd, "memory.db")
    with open(os.path.join(cwd, "small_job.py"), "w") as f:
        f.write(BIG_JOB.format(idle=0.5, lines=500, after=0))  # first: the worker imports what storing needs
    with open(os.path.join(cwd, "big_job.py"), "w") as f:
        f.write(BIG_JOB.format(idle=2.0, lines=points // 2, after=3.0))
    with open(os.path.join(cwd, "memory.py"), "w") as f:
        f.write(
            "from jobqueue import Experiment, RunDescription\n"
            "RUN_DESCRIPTION = RunDescription('memory', experiments=[Experiment('small', 'python small_job.py'), "
            "Experiment('big', 'python big_job.py')])\n"
        )
    subprocess.run(jq() + ["enqueue", "memory", "--db", db], cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=JQ_ENV)
    worker = subprocess.Popen(jq() + ["worker", "--db", db, "--metrics-every", "1", "-q"], cwd=cwd, env=JQ_ENV)
    proc = psutil.Process(worker.pid)
    samples: list[tuple[float, int, str]] = []
    start = time.monotonic()
    while worker.poll() is None:
        try:
            rss = proc.memory_info().rss
            running = " ".join(" ".join(c.cmdline()) for c in proc.children())
        except psutil.Error:
            break
        samples.append((time.monotonic() - start, rss, running))
        time.sleep(0.01)
    worker.wait()
    big = [(t, rss) for t, rss, job in samples if "big_job.py" in job]
    idle = [rss for t, rss in big if t < big[0][0] + 1.5]  # the big job's first 1.5 s: it sleeps, nothing to read
    peak = max(rss for _, rss in big)
    (stored,) = open_db(db).transact(lambda tx: tx.first("SELECT count(*) FROM metric_points"), write=False)
    print(
        f"jq worker storing a {points:,}-point file while its job runs ({stored:,} points stored): "
        f"RSS idle {max(idle) / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB, +{(peak - max(idle)) / 1e6:.1f} MB (goal <= 10 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--results-jobs", type=int, default=10_000)
    parser.add_argument("--big-points", type=int, default=100_000)
    parser.add_argument("--parts", default="ingest,results,memory", help="which of the three to run, e.g. results")
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as cwd:
        keep_template_db_in(cwd)
        if "ingest" in parts:
            ingestion(cwd, args.jobs, args.points)
        if "results" in parts:
            results_timing(cwd, args.results_jobs)
        if "memory" in parts:
            worker_memory(cwd, args.big_points)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
