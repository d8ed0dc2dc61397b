"""A sweep of a million jobs: enqueue it, enqueue it again, and read it, each beside a streaming reference.

    python benchmarks/scale.py [--jobs 100000,1000000] [--repeat 3] [--failed-every 100]

For each size, a `seed x lr` grid of `true --seed=... --lr=...` (1,000 lrs per seed) is enqueued with the real
`jq enqueue` into a new SQLite DB, and the same rows -- the same columns, values, schema, indexes and pragmas, in
one transaction -- are streamed by a plain sqlite3.executemany (the reference). Goals: jq within 1.2x the
reference's time, and at most 150 MB peak RSS at 1,000,000 jobs. Then, on the 1,000,000-job DB: the same
enqueue again (adds nothing; same goals), one job in --failed-every marked failed (an attempt with a one-line
log each), and the readers timed with their peak RSS: `jq status`, `jq list --state failed`, `jq list`,
`jq sql` over every job, `jq cancel RUN` and `jq retry RUN`; what a job costs in the DB file, per column and
index; then, with five metrics' summaries added to every job, `jq results` as a table (in sweep order and
sorted), CSV, JSON and grouped. Each figure is the whole command (Python start-up included), its output
discarded; the 100,000-job figures are medians of --repeat runs. The load average is printed first and last: this project's
machines are shared, and a loaded one slows every figure.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command as jq, keep_template_db_in, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("{name}", experiments=[
    Experiment("e", "true", ParamGrid([("seed", list(range({seeds}))), ("lr", list(range(1000)))]).generate_params()),
])
"""

# The reference: the rows `jq enqueue` writes for SWEEP, made in plain Python and streamed through executemany into
# a DB with jq's schema (copied from a jq DB) and jq's pragmas, in one transaction.
REFERENCE = r"""
import itertools, json, os, sqlite3, sys
seeds, path, schema_db, run, train_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
schema = [sql for (sql,) in sqlite3.connect(schema_db).execute(
    "SELECT sql FROM sqlite_master WHERE tbl_name IN ('runs', 'jobs') AND sql IS NOT NULL ORDER BY rowid")]
conn = sqlite3.connect(path, isolation_level=None)
for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
    conn.execute(f"PRAGMA {pragma}")
for statement in schema:
    conn.execute(statement)
cwd, root_dir = os.getcwd(), f"{run}/e_"
log_dir, now = os.path.join(cwd, train_dir, root_dir), "2026-12-01 00:00:00.000000"
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO runs (id, name, sweep, train_dir, suffix, cwd, settings, created_at) "
             "VALUES (1, ?, ?, ?, '', ?, '{}', ?)", (run, run, train_dir, cwd, now))


def rows():
    dumps = json.dumps
    for i, (seed, lr) in enumerate(itertools.product(range(seeds), range(1000))):
        name = f"{i:02d}_e_see_{seed}_lr_{lr}"
        argv = ["true", f"--seed={seed}", f"--lr={lr}", f"--experiment={name}", f"--train_dir={train_dir}/{root_dir}"]
        yield (1, i, name, "e", dumps({"seed": seed, "lr": lr}), dumps(argv), " ".join(argv), None, cwd, root_dir,
               log_dir, "queued", 0, 0, 1, None, now, now)


columns = ("run_id, idx, name, experiment, params, argv, cmd, env, cwd, root_dir, log_dir, state, attempts, failures, "
           "max_attempts, timeout, created_at, updated_at")
conn.executemany(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' * 18)})", rows())
conn.execute("COMMIT")
conn.close()
"""

# Runs a command and prints its wall time and peak RSS: the only child this process waits for is the command.
MEASURED = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, code)
"""


def measured(argv: list[str], cwd: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one run of a command, which must succeed."""
    os.sync()  # no run pays for the writes of the one before it
    out = subprocess.run(
        [sys.executable, "-c", MEASURED, *argv], cwd=cwd, env=JQ_ENV, capture_output=True, text=True, check=True
    ).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"{' '.join(argv)} exited {out[2]}")
    return float(out[0]), float(out[1])


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"


def compare(what: str, jq_runs: list[tuple[float, float]], ref_runs: list[tuple[float, float]]) -> None:
    jq_s, jq_mb = statistics.median(s for s, _ in jq_runs), max(mb for _, mb in jq_runs)
    ref_s, ref_mb = statistics.median(s for s, _ in ref_runs), max(mb for _, mb in ref_runs)
    runs = f", median of {len(jq_runs)}" if len(jq_runs) > 1 else ""
    print(
        f"{what:<34} jq {jq_s:7.2f} s {jq_mb:6.0f} MB | reference {ref_s:7.2f} s {ref_mb:5.0f} MB | "
        f"{jq_s / ref_s:.2f}x (goal <= 1.2x){runs}",
        flush=True,
    )


def enqueue_against_reference(cwd: str, jobs: int, repeat: int, schema_db: str, again: bool) -> str:
    """Enqueue `jobs` with jq and with the reference, `repeat` times each, alternating, and (`again`) jq once more
    into its last DB, which it returns."""
    name = f"grid{jobs}"
    write_sweep(cwd, name, SWEEP.format(name=name, seeds=jobs // 1000))
    jq_runs, ref_runs = [], []
    for i in range(repeat):
        db, ref = os.path.join(cwd, f"{name}_{i}.db"), os.path.join(cwd, f"{name}_{i}_reference.db")
        ref_runs.append(
            measured([sys.executable, "-c", REFERENCE, str(jobs // 1000), ref, schema_db, name, "./train_dir"], cwd)
        )
        jq_runs.append(measured(jq() + ["enqueue", name, "--db", db], cwd))
        os.remove(ref)
        if i < repeat - 1:
            os.remove(db)
    compare(f"enqueue {jobs:,} jobs", jq_runs, ref_runs)
    if again:
        compare(f"enqueue {jobs:,} again (adds none)", [measured(jq() + ["enqueue", name, "--db", db], cwd)], ref_runs)
        total = sqlite3.connect(db).execute("SELECT count(*) FROM jobs").fetchone()[0]
        assert total == jobs, f"the second enqueue left {total} jobs"
    return db


def fail_some(db: str, cwd: str, every: int) -> int:
    """Mark one job in `every` failed, with an attempt and a one-line log: what a run with failures looks like."""
    logs = Path(cwd) / "logs"
    logs.mkdir(exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO workers (host, pid, slots, backend, started_at, heartbeat_at, stopped_at) "
        "VALUES ('bench', 1, 1, 'processes', '2026-12-01', '2026-12-01', '2026-12-01')"
    )
    failed = conn.execute(f"SELECT id, name FROM jobs WHERE id % {every} = 0").fetchall()
    for _, name in failed:
        (logs / f"{name}.log").write_text(f"Traceback: job {name} failed\n")
    conn.execute(f"UPDATE jobs SET state = 'failed', attempts = 1, failures = 1, exit_code = 1 WHERE id % {every} = 0")
    conn.execute(
        "INSERT INTO attempts (job_id, number, worker_id, host, state, started_at, ended_at, exit_code, log_path) "
        f"SELECT id, 1, 1, 'bench', 'failed', '2026-12-01', '2026-12-01', 1, ? || '/' || name || '.log' FROM jobs "
        f"WHERE id % {every} = 0",
        (str(logs),),
    )
    conn.execute("COMMIT")
    conn.close()
    return len(failed)


def readers(db: str, cwd: str, run: str, failed: int) -> None:
    commands = {
        "jq status": ["status"],
        f"jq list --state failed ({failed:,} jobs)": ["list", "--state", "failed"],
        "jq list (every job)": ["list"],
        'jq sql "select * from jobs"': ["sql", "select * from jobs"],
        "jq cancel RUN": ["cancel", run],
        "jq retry RUN": ["retry", run],
    }
    for what, args in commands.items():
        seconds, mb = measured(jq() + args + ["--db", db], cwd)
        print(f"{what:<40} {seconds:7.2f} s {mb:6.0f} MB (goal <= 150 MB)", flush=True)


METRICS = ("reward", "loss", "fps", "entropy", "len")


def add_metrics(db: str, every_nan: int = 97) -> None:
    """A summary of each of METRICS for every job, as the worker keeps them (one job in `every_nan` with a NaN
    reward, stored as NULL): what `jq results` reads."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for seq, key in enumerate(METRICS):
        last = (
            f"CASE WHEN id % {every_nan} = 0 THEN NULL ELSE (id % 1009) * {seq + 1} * 0.001 END"
            if seq == 0
            else (f"(id % 1013) * {seq + 1} * 0.001")
        )
        conn.execute(
            "INSERT INTO metric_summaries (job_id, key, seq, last, last_step, min, max, count) "
            f"SELECT id, ?, ?, {last}, 1000, 0.0, 10.0, 11 FROM jobs",
            (key, seq),
        )
    conn.execute("COMMIT")
    conn.close()


def results_readers(db: str, cwd: str, run: str) -> None:
    """`jq results` in each of its forms on the run, with its time and peak RSS; the output is a row per job
    (per lr with --group-by), written to /dev/null."""
    for what, args in {
        "jq results": [],
        "jq results --sort reward": ["--sort", "reward"],
        "jq results --csv": ["--csv"],
        "jq results --json": ["--json"],
        "jq results --group-by lr --sort reward": ["--group-by", "lr", "--sort", "reward"],
    }.items():
        seconds, mb = measured(jq() + ["results", run, *args, "--db", db], cwd)
        print(f"{what:<40} {seconds:7.2f} s {mb:6.0f} MB (goal <= 150 MB)", flush=True)


def bytes_per_job(db: str) -> None:
    """The DB file per job, and what each column's values and each index take of it."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    size = os.path.getsize(db)
    print(f"DB file: {size / jobs:.0f} bytes per job ({size / 2**20:.0f} MB for {jobs:,} jobs)")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    sums = conn.execute("SELECT " + ", ".join(f"sum(length({c}))" for c in columns) + " FROM jobs").fetchone()
    widest = sorted(zip(columns, sums), key=lambda c: -(c[1] or 0))
    print("  values per job: " + ", ".join(f"{c} {(n or 0) / jobs:.0f}" for c, n in widest if (n or 0) / jobs >= 1))
    try:
        pages = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.OperationalError:
        return  # an SQLite built without the dbstat table
    print("  pages per job: " + ", ".join(f"{name} {n / jobs:.0f}" for name, n in pages if n / jobs >= 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="100000,1000000", help="sizes, comma-separated (multiples of 1,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each enqueue below 1,000,000 jobs")
    parser.add_argument("--failed-every", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(n) for n in args.jobs.split(",")]
    print(load_average(), flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as cwd:
        keep_template_db_in(cwd)
        write_sweep(cwd, "tiny", SWEEP.format(name="tiny", seeds=1))
        schema_db = os.path.join(cwd, "schema.db")
        measured(jq() + ["enqueue", "tiny", "--db", schema_db], cwd)  # warm-up: bytecode, template DB
        for jobs in sizes:
            repeat = args.repeat if jobs < 1_000_000 else 1
            db = enqueue_against_reference(cwd, jobs, repeat, schema_db, again=jobs == sizes[-1])
        run = f"grid{sizes[-1]}"
        failed = fail_some(db, cwd, args.failed_every)
        print(f"on the {sizes[-1]:,}-job run, {failed:,} of them failed:")
        readers(db, cwd, run, failed)
        bytes_per_job(db)
        add_metrics(db)
        print(f"with {len(METRICS)} metrics' summaries per job added (a NaN reward in one job in 97):")
        results_readers(db, cwd, run)
    print(load_average())


if __name__ == "__main__":
    main()
