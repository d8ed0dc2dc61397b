"""Claims per second with N processes racing on one queue, SQLite and PostgreSQL side by side.

    python benchmarks/claims.py [--processes 8] [--jobs 20000] [--rounds 3] [--baseline REV] [--only sqlite]
                                [--postgres URL]

Without --postgres it starts a throwaway PostgreSQL server itself (tests/services.py). --baseline REV races the
claim of an older commit too (its jobqueue/ from `git archive`), in the same rounds, so that a change is measured
before and after under the same load. Each round races every contender once, one after the other, on a queue of
its own; the summary is the median of the rounds (this machine's speed drifts from one minute to the next). Each claim is
jobqueue's own claim_next_job, which takes the oldest queued job and opens its attempt: on PostgreSQL one
statement outside any transaction, on SQLite an UPDATE and an INSERT in one BEGIN IMMEDIATE. Goals: SQLite
>= 6,000 claims/s, PostgreSQL >= 5,000, 0 duplicates, 0 errors. Beside each, the reference: the same race with the
driver alone, each claim one UPDATE ... RETURNING in its own transaction and no attempt (shared/notes: ~28,000/s
on SQLite, ~9,000/s on PostgreSQL on a quiet machine); and between the two, the driver alone running jobqueue's own
claim statements, which tells the cost of the SQL from that of the Python around it. The load average is printed: a
loaded machine slows them all.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import contextlib, sys, time, os
from jobqueue.db import open_db
from jobqueue import queue
db = open_db(sys.argv[1], create=False)
worker = queue.register_worker(db, slots=1, gpus=None, backend="bench", run_id=None)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
ids = []
with getattr(db, "kept_connection", contextlib.nullcontext)():  # as a worker's loop thread claims (older code: none)
    while True:
        job = queue.claim_next_job(db, worker, slot=0, gpus=None)
        if job is None:
            break
        ids.append(job.job_id)
with open(sys.argv[3], "w") as f:
    f.write("\\n".join(map(str, ids)))
"""


# The reference: the driver alone, one claim per transaction, no attempt opened.
RAW_CHILD = """
import os, sys, time
url, go, out = sys.argv[1:4]
if url.startswith("postgresql"):
    import psycopg
    from sqlalchemy.engine import make_url
    u = make_url(url)
    conn = psycopg.connect(host=u.query["host"], port=u.query["port"], user=u.username, dbname=u.database)
    take = ("UPDATE jobs SET state = 'running', attempts = attempts + 1 WHERE id = (SELECT id FROM jobs WHERE "
            "state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id")
    begin = None
else:
    import sqlite3
    conn = sqlite3.connect(url, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=NORMAL")
    take = ("UPDATE jobs SET state = 'running', attempts = attempts + 1 WHERE id = (SELECT id FROM jobs WHERE "
            "state = 'queued' ORDER BY id LIMIT 1) RETURNING id")
    begin = "BEGIN IMMEDIATE"
while not os.path.exists(go):
    time.sleep(0.005)
ids = []
while True:
    if begin:
        conn.execute(begin)
    row = conn.execute(take).fetchone()
    conn.commit() if not begin else conn.execute("COMMIT")
    if row is None:
        break
    ids.append(row[0])
with open(out, "w") as f:
    f.write("\\n".join(map(str, ids)))
"""


# Between the two: the driver alone running jobqueue's own claim statements (taken from jobqueue.queue, rendered for
# the driver), one claim per transaction, attempt opened, no pool, no retries, no ClaimedJob: what the SQL of a claim
# costs, apart from the Python around it.
JQ_SQL_CHILD = """
import os, sys, time
url, go, out = sys.argv[1:4]
from jobqueue import queue, sql
from jobqueue.db import open_db
db = open_db(url, create=False)
worker = queue.register_worker(db, slots=1, gpus=None, backend="bench", run_id=None)
db.dispose()
dialect = sql.POSTGRESQL if url.startswith("postgresql") else sql.SQLITE
take = sql.render(queue._CLAIM_QUERIES[dialect, False, False], dialect)
params = {"worker_id": worker.id, "host": worker.host, "gpus": None, "slot": 0, "run_id": None, "job_id": None}
if dialect == sql.POSTGRESQL:
    import psycopg
    from sqlalchemy.engine import make_url
    u = make_url(url)
    conn = psycopg.connect(host=u.query["host"], port=u.query["port"], user=u.username, dbname=u.database,
                           autocommit=True)
else:
    import sqlite3
    conn = sqlite3.connect(url, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    open_attempt = sql.render(queue._OPEN_ATTEMPT, dialect)
while not os.path.exists(go):
    time.sleep(0.005)
ids = []
while True:
    if dialect == sql.POSTGRESQL:
        row = conn.execute(take, params).fetchone()
    else:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(take, params).fetchone()
        if row is not None:
            opened = {**params, "job_id": row[0], "number": row[7], "log_dir": row[9], "name": row[2]}
            conn.execute(open_attempt, opened).fetchone()
        conn.execute("COMMIT")
    if row is None:
        break
    ids.append(row[0])
with open(out, "w") as f:
    f.write("\\n".join(map(str, ids)))
"""


def fill(url: str, jobs: int) -> None:
    from jobqueue import queue
    from jobqueue.db import open_db
    from jobqueue.sweep import JobSpec

    db = open_db(url)
    specs = [
        JobSpec(
            name=f"{i:06d}",
            experiment="e",
            params={"i": i},
            argv=["true"],
            cmd="true",
            root_dir="r/e_",
            experiment_dir="td/r/e_",
            index=i,
        )
        for i in range(jobs)
    ]
    queue.enqueue(db, "claims", specs, sweep="bench", train_dir="td")
    db.dispose()


def claim_race(url: str, processes: int, jobs: int, child: str = CHILD, code_dir: Path = REPO) -> dict:
    """Fill a queue, let `processes` processes claim it dry (importing jobqueue from code_dir); return claims/s,
    duplicates, errors."""
    fill(url, jobs)
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        outs = [os.path.join(tmp, f"ids{i}") for i in range(processes)]
        children = [
            subprocess.Popen(
                [sys.executable, "-c", child, url, go, out], cwd=code_dir, stderr=subprocess.PIPE, text=True
            )
            for out in outs
        ]
        time.sleep(1.5 + 0.2 * processes)  # let every child import and connect before the start signal
        start = time.perf_counter()
        Path(go).touch()
        codes = [c.wait(600) for c in children]
        elapsed = time.perf_counter() - start
        errors = [c.stderr.read() for c, code in zip(children, codes) if code != 0]
        claimed = [int(x) for out in outs if os.path.exists(out) for x in Path(out).read_text().split()]
    return {
        "claims_per_s": len(claimed) / elapsed,
        "claimed": len(claimed),
        "distinct": len(set(claimed)),
        "duplicates": len(claimed) - len(set(claimed)),
        "errors": errors,
        "seconds": elapsed,
    }


def code_at(revision: str, into: Path) -> Path:
    """jobqueue/ as it was at `revision`, in a directory of its own, for the children to import."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", revision, "jobqueue"], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


class Databases:
    """A new, empty queue for every race: an SQLite file, or a database on the PostgreSQL server."""

    def __init__(self, tmp: str, postgres: str | None):
        self.tmp, self.postgres, self.server, self.made = tmp, postgres, None, 0
        if postgres is None:
            from tests.services import start_postgres

            self.server = start_postgres(Path(tempfile.mkdtemp()))

    def new(self, dialect: str) -> str:
        self.made += 1
        name = f"jq_bench_claims_{os.getpid()}_{self.made}"
        if dialect == "SQLite":
            return os.path.join(self.tmp, name + ".db")
        if self.server is not None:
            return self.server.create_database(name)
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.postgres)
        with psycopg.connect(url.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return url.set(database=name).render_as_string(False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also race the claim of this git revision (before)")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="race on one database only")
    parser.add_argument(
        "--postgres", help="a postgresql+psycopg:// URL whose role may create databases (default: start a server)"
    )
    args = parser.parse_args()
    print("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(tmp, args.postgres)
        contenders = [("jobqueue", CHILD, REPO)]
        if args.baseline:
            before = code_at(args.baseline, Path(tmp) / "before")
            contenders.insert(0, (f"jobqueue at {args.baseline}", CHILD, before))
        contenders.append(("the driver, jobqueue's SQL", JQ_SQL_CHILD, REPO))
        contenders.append(("the driver alone", RAW_CHILD, REPO))
        try:
            for dialect, goal in [("SQLite", 6000), ("PostgreSQL", 5000)]:
                if args.only and args.only != dialect.lower():
                    continue
                print(
                    f"{dialect}, {args.processes} processes racing on {args.jobs:,} jobs (goal >= {goal:,} claims/s):"
                )
                results: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
                for i in range(args.rounds):
                    line = []
                    for name, child, code_dir in contenders:
                        r = claim_race(databases.new(dialect), args.processes, args.jobs, child, code_dir)
                        results[name].append(r)
                        line.append(f"{name} {r['claims_per_s']:,.0f}/s")
                        for error in r["errors"][:3]:
                            print("   ", name, error.strip().splitlines()[-1])
                    print(f"  round {i + 1}: " + ", ".join(line), flush=True)
                raw = statistics.median(r["claims_per_s"] for r in results["the driver alone"])
                for name, rs in results.items():
                    rate = statistics.median(r["claims_per_s"] for r in rs)
                    print(
                        f"  {name}: median {rate:,.0f} claims/s ({rate / raw:.2f}x the driver alone), "
                        f"{sum(r['duplicates'] for r in rs)} duplicates, {sum(len(r['errors']) for r in rs)} errors"
                    )
        finally:
            databases.stop()
    print("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " at the end")


if __name__ == "__main__":
    main()
