"""Claims per second with N processes racing on one queue, SQLite and PostgreSQL side by side.

    python benchmarks/claims.py [--processes 8] [--jobs 20000] [--postgres URL]

Without --postgres it starts a throwaway PostgreSQL server itself (tests/services.py). Each claim is
jobqueue's own claim_next_job, which takes the oldest queued job and opens its attempt: on PostgreSQL one
statement outside any transaction, on SQLite an UPDATE and an INSERT in one BEGIN IMMEDIATE. Goals: SQLite
>= 6,000 claims/s, PostgreSQL >= 5,000, 0 duplicates, 0 errors. Beside each, the reference: the same race with the
driver alone, each claim one UPDATE ... RETURNING in its own transaction and no attempt (shared/notes: ~28,000/s
on SQLite, ~9,000/s on PostgreSQL on a quiet machine). The load average is printed: a loaded machine slows both.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import sys, time, os
from jobqueue.db import open_db
from jobqueue import queue
db = open_db(sys.argv[1], create=False)
worker = queue.register_worker(db, slots=1, gpus=None, backend="bench", run_id=None)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
ids = []
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


def claim_race(url: str, processes: int, jobs: int, child: str = CHILD) -> dict:
    """Fill a queue, let `processes` processes claim it dry; return claims/s, duplicates, errors."""
    fill(url, jobs)
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        outs = [os.path.join(tmp, f"ids{i}") for i in range(processes)]
        children = [
            subprocess.Popen([sys.executable, "-c", child, url, go, out], cwd=REPO, stderr=subprocess.PIPE, text=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--postgres", help="a postgresql+psycopg:// URL of an empty DB (default: start a server)")
    args = parser.parse_args()
    server = None
    urls = [args.postgres, None]
    if args.postgres is None:
        from tests.services import start_postgres

        server = start_postgres(Path(tempfile.mkdtemp()))
        urls = [server.create_database("jq_bench_claims"), server.create_database("jq_bench_claims_raw")]
    print("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            races = [
                ("SQLite", os.path.join(tmp, "claims.db"), os.path.join(tmp, "raw.db"), 6000),
                ("PostgreSQL", *urls, 5000),
            ]
            for name, db, raw_db, goal in races:
                r = claim_race(db, args.processes, args.jobs)
                line = (
                    f"{name:<10} {args.processes} processes, {r['claimed']} claims in {r['seconds']:.2f} s: "
                    f"{r['claims_per_s']:,.0f} claims/s (goal >= {goal:,}), {r['duplicates']} duplicates, "
                    f"{len(r['errors'])} errors"
                )
                if raw_db is not None:
                    raw = claim_race(raw_db, args.processes, args.jobs, RAW_CHILD)
                    line += f" | the driver alone: {raw['claims_per_s']:,.0f} claims/s, {raw['duplicates']} duplicates"
                print(line, flush=True)
                for error in r["errors"][:3]:
                    print("   ", error.strip().splitlines()[-1])
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
