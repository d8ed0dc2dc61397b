"""jq ui's speed: what each poll costs the DB on a big run, and how soon Chromium shows a run page of many jobs.

    python benchmarks/ui.py [--jobs 1000000] [--page-jobs 10000] [--polls 30] [--no-browser]

1. A run of --jobs jobs (enqueued by `jq enqueue`, then 60% succeeded and 5% failed with an attempt and a
   metric each, 200 running on 25 workers, the rest queued, written in SQL), while a writer finishes 10 running
   jobs and starts 10 queued ones between polls. It times, in process, the DB reads of a run page's poll
   (the run's counts and ETA, a page of 50 jobs, the timeline's new and ended attempts), of a runs page's
   poll, and of what the pages read when asked (a full count, a job, a page sorted by a metric). Target: a
   poll under 20 ms.
2. A run of --page-jobs jobs made the same way, served by `jq ui`, opened in headless Chromium: the time from
   navigation to the jobs table drawn (target: under 1 s), to the timeline and to the results plots.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command as jq, keep_template_db_in, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("big", experiments=[
    Experiment("e", "python train.py", ParamGrid([("seed", list(range({n} // 4))), ("lr", [0.001, 0.01, 0.1, 0.3])]).generate_params()),
])
"""
WORKERS, SLOTS = 25, 8  # 200 running at once
MOVED_PER_POLL = 10
T = "strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || ({}) || ' seconds') || '000'"  # a time as SQLAlchemy writes it


def make_run(cwd: str, jobs: int) -> str:
    """A DB holding one run of `jobs` jobs part-way through, as a sweep on 25 workers leaves it."""
    write_sweep(cwd, "big", SWEEP.format(n=jobs))
    db = os.path.join(cwd, "jobqueue.db")
    subprocess.run(jq() + ["enqueue", "big", "--db", db], cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=JQ_ENV)
    done, failed, running = int(jobs * 0.60), int(jobs * 0.05), WORKERS * SLOTS
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for w in range(1, WORKERS + 1):
        conn.execute(
            "INSERT INTO workers (id, host, pid, slots, backend, run_id, started_at, heartbeat_at) "
            f"VALUES (?, ?, ?, ?, 'processes', 1, {T.format(0)}, {T.format(0)})",
            (w, f"node{w:02d}", 1000 + w, SLOTS),
        )
    conn.execute(
        "UPDATE jobs SET state = CASE WHEN id <= :done THEN 'succeeded' WHEN id <= :failed THEN 'failed' "
        "WHEN id <= :running THEN 'running' ELSE 'queued' END, attempts = (id <= :running), "
        f"started_at = CASE WHEN id <= :running THEN {T.format('id')} END, "
        f"ended_at = CASE WHEN id <= :failed THEN {T.format('id + 50')} END, "
        "exit_code = CASE WHEN id <= :done THEN 0 WHEN id <= :failed THEN 1 END",
        {"done": done, "failed": done + failed, "running": done + failed + running},
    )
    conn.execute(
        "INSERT INTO attempts (job_id, number, worker_id, host, slot, state, started_at, ended_at, exit_code, log_path) "
        "SELECT id, 1, 1 + id % :workers, 'node' || printf('%02d', 1 + id % :workers), id % :slots, state, started_at, "
        "ended_at, exit_code, '/nonexistent/' || name || '.log' FROM jobs WHERE attempts = 1 ORDER BY id",
        {"workers": WORKERS, "slots": SLOTS},
    )
    conn.execute(
        "INSERT INTO metric_summaries (job_id, key, seq, last, last_step, min, max, count) "
        "SELECT id, 'loss', 0, 1.0 / (1 + id % 97), 1000, 0.001, 1.0, 100 FROM jobs WHERE state IN ('succeeded', 'failed')"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return db


class Writer:
    """A worker's DB writes between two polls: some running jobs end, as many queued ones start."""

    def __init__(self, db: str):
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=30)

    def move(self, n: int = MOVED_PER_POLL) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        ending = [
            r[0]
            for r in c.execute("SELECT id FROM jobs WHERE run_id = 1 AND state = 'running' ORDER BY id LIMIT ?", (n,))
        ]
        marks = ",".join("?" * len(ending))
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"
        c.execute(
            f"UPDATE attempts SET state = 'succeeded', ended_at = {now}, exit_code = 0 WHERE job_id IN ({marks})",
            ending,
        )
        c.execute(f"UPDATE jobs SET state = 'succeeded', ended_at = {now}, exit_code = 0 WHERE id IN ({marks})", ending)
        starting = [
            r[0]
            for r in c.execute("SELECT id FROM jobs WHERE run_id = 1 AND state = 'queued' ORDER BY id LIMIT ?", (n,))
        ]
        for i, job in enumerate(starting):
            c.execute(
                f"INSERT INTO attempts (job_id, number, worker_id, host, slot, state, started_at) VALUES (?, 1, ?, 'node', ?, 'running', {now})",
                (job, 1 + i % WORKERS, i % SLOTS),
            )
        marks = ",".join("?" * len(starting))
        c.execute(
            f"UPDATE jobs SET state = 'running', attempts = 1, started_at = {now} WHERE id IN ({marks})", starting
        )
        c.execute("COMMIT")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def poll_costs(db: str, polls: int) -> None:
    from jobqueue.ui.api import Dashboard
    from jobqueue.ui.counts import FRESH_FOR, LiveCounts
    from jobqueue.ui.readonly import ReadOnlyDB

    readonly = ReadOnlyDB(db)
    counts = LiveCounts(readonly)
    dash = Dashboard(readonly, counts)
    writer = Writer(db)
    first = timed(counts.current)
    timeline = dash.attempts(1)
    after = max(a["id"] for a in timeline["attempts"])
    open_ids = [a["id"] for a in timeline["attempts"] if a["state"] == "running"]
    run_page, runs_page, cpu, recounts = [], [], [], counts.full_counts
    for _ in range(polls):
        writer.move()
        time.sleep(FRESH_FOR)  # as pages 2 s apart: each poll reads the counts afresh

        def run_poll():
            nonlocal after, open_ids
            dash.run(1)
            dash.jobs(1, limit=50)
            new = dash.attempts(1, after=after, open_ids=open_ids)["attempts"]
            after = max([after, *(a["id"] for a in new)])
            open_ids = sorted(
                {*open_ids, *(a["id"] for a in new if a["state"] == "running")}
                - {a["id"] for a in new if a["state"] != "running"}
            )

        started_cpu = time.process_time()  # SQLite reads in this process: its CPU time, whatever else the machine runs
        run_page.append(timed(run_poll))
        cpu.append(time.process_time() - started_cpu)
        time.sleep(FRESH_FOR)
        runs_page.append(timed(dash.runs))
    recounts = counts.full_counts - recounts

    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        return (
            f"median {1000 * statistics.median(xs):.1f} ms, 90th percentile {1000 * xs[int(0.9 * (len(xs) - 1))]:.1f} ms, "
            f"max {1000 * xs[-1]:.1f} ms"
        )

    print(f"  a run page's poll (counts and ETA, 50 jobs, the timeline's new attempts): {ms(run_page)}; CPU {ms(cpu)}")
    print(f"  the runs page's poll: {ms(runs_page)}")
    print(f"  full counts: {recounts} during the {polls} polls; the first took {1000 * first:.0f} ms")
    print(
        f"  on demand: a job {1000 * timed(lambda: dash.job(1)):.1f} ms; 50 failed jobs "
        f"{1000 * timed(lambda: dash.jobs(1, state='failed')):.1f} ms; 50 jobs sorted by loss "
        f"{1000 * timed(lambda: dash.jobs(1, sort='metric:loss', descending=True)):.0f} ms; "
        f"the timeline's first read {1000 * timed(lambda: dash.attempts(1)):.0f} ms"
    )
    readonly.close()


def page_speed(cwd: str, db: str, repeat: int = 3) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.ui_support import headless_chromium

    ui = subprocess.Popen(
        jq() + ["ui", "--db", db, "--port", "0"], cwd=cwd, stdout=subprocess.PIPE, text=True, env=JQ_ENV
    )
    url = ui.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0]
    driver = headless_chromium(f"{cwd}/chromium", "1400,1000")
    try:
        marks: dict[str, list[float]] = {"jq:table": [], "jq:timeline": [], "jq:plots": []}
        for _ in range(repeat + 1):  # the first warms the server's caches and Chromium's
            driver.get(url + "runs/1")
            got = WebDriverWait(driver, 60, 0.05).until(
                lambda d: d.execute_script(
                    "const m = ['jq:table', 'jq:timeline', 'jq:plots'].map(n => performance.getEntriesByName(n)[0]);"
                    "return m.every(Boolean) ? m.map(e => e.startTime) : null"
                )
            )
            for name, at in zip(marks, got):
                marks[name].append(at)
        shown = {name: statistics.median(times[1:]) for name, times in marks.items()}
        print(
            f"  from navigation: jobs table drawn {shown['jq:table']:.0f} ms, timeline {shown['jq:timeline']:.0f} ms, "
            f"results plots {shown['jq:plots']:.0f} ms (median of {repeat})"
        )
    finally:
        driver.quit()
        ui.terminate()
        ui.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000, help="0: skip the DB part")
    parser.add_argument("--page-jobs", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        keep_template_db_in(cwd)
        if args.jobs:
            big = Path(cwd) / "big"
            big.mkdir()
            started = time.perf_counter()
            db = make_run(str(big), args.jobs)
            print(
                f"one run of {args.jobs:,} jobs (made in {time.perf_counter() - started:.0f} s), SQLite, "
                f"{MOVED_PER_POLL} jobs ending and starting between polls:"
            )
            poll_costs(db, args.polls)
        if not args.no_browser:
            page = Path(cwd) / "page"
            page.mkdir()
            print(f"a run page of {args.page_jobs:,} jobs in headless Chromium:")
            page_speed(str(page), make_run(str(page), args.page_jobs))


if __name__ == "__main__":
    main()
