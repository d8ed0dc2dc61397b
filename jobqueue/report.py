"""`jq status`: counts per run and state, running jobs whose worker has gone silent, failed jobs' last log lines,
and the runs' submissions.

Plain SQL that runs on SQLite's stdlib driver and on PostgreSQL alike. On an up-to-date SQLite file the
report never imports SQLAlchemy (whose import alone costs more than the query on a million jobs).
"""

from __future__ import annotations

import json
import os
from collections import deque

from jobqueue import sql
from jobqueue.db import Transaction, open_db
from jobqueue.paths import current_sqlite_file, resolve_url, sqlite_readonly_connection
from jobqueue.sql import COUNTS_SQL, HEARTBEAT_SECONDS, MISSED_BEATS, decode_time, unknown_run
from jobqueue.states import DISPLAY_ORDER

STATES = tuple(state.value for state in DISPLAY_ORDER)

SILENT_AFTER_SECONDS = MISSED_BEATS * HEARTBEAT_SECONDS  # with the default --heartbeat

RUNS_SQL = "SELECT id, name, settings FROM runs ORDER BY id"
# Running jobs whose worker has missed two of its heartbeats, by the DB's clock, per run: a range of ix_jobs_state_id
# (running jobs are bounded by the slots of all workers, however big the run) and the workers' primary key.
SILENT_SQL = (
    "SELECT j.run_id, count(*), count(DISTINCT j.worker_id), min(w.heartbeat_at), max({now}) FROM jobs j "
    "JOIN workers w ON w.id = j.worker_id WHERE j.state = 'running' AND w.heartbeat_at < {ago_beats} GROUP BY j.run_id"
)
# A run's newest failed jobs: a backward walk of ix_jobs_run_state_id that stops after :shown rows, however many failed.
FAILED_SQL = (
    "SELECT j.id, j.name, j.exit_code, j.signal, a.reason, a.log_path FROM jobs j "
    "LEFT JOIN attempts a ON a.job_id = j.id AND a.number = j.attempts "
    "WHERE j.run_id = (SELECT id FROM runs WHERE name = :run) AND j.state = 'failed' ORDER BY j.id DESC LIMIT :shown"
)
# A run's submissions are listed one by one, but those of one sbatch or NGC job per experiment only while a run has
# at most PER_JOB_LISTED of them; beyond, they are counted by backend and state (a run of 100,000 jobs has 100,000).
PER_JOB_LISTED = 20
PER_JOB_COUNTS_SQL = (
    "SELECT r.name, s.backend, s.state, count(*) FROM submissions s JOIN runs r ON r.id = s.run_id "
    "WHERE s.mode = 'per-job' GROUP BY r.name, s.backend, s.state ORDER BY r.name, s.backend, s.state"
)


def too_many_to_list(per_job: dict[str, dict[str, int]]) -> bool:
    """Whether a run's submissions of one job each, counted by backend and state, are counted rather than listed."""
    return sum(n for states in per_job.values() for n in states.values()) > PER_JOB_LISTED


def per_job_line(run: str, backend: str, states: dict[str, int]) -> str:
    """The line that counts a run's submissions of one job each to `backend`, by state."""
    return f"{run}: {backend} per-job submissions, one per job: {', '.join(f'{n} {s}' for s, n in states.items())}"


SUBMISSIONS_SQL = (
    "SELECT r.name, s.id, s.backend, s.mode, s.external_id, s.tasks, s.state, s.job_id, s.exit_code "
    "FROM submissions s JOIN runs r ON r.id = s.run_id WHERE s.mode <> 'per-job' OR s.run_id IN ({listed}) "
    "ORDER BY s.id"
)


class Reader:
    """A DBAPI connection, read-only on SQLite, and the rows of plain SQL queries (run as a Transaction runs them)."""

    def __init__(self, conn, close, dialect: str):
        self.conn, self._close, self.dialect = conn, close, dialect

    def rows(self, query: str, params: dict | None = None) -> list[tuple]:
        return [tuple(r) for r in Transaction(self.dialect, self.conn.cursor()).all(query, params)]

    def close(self) -> None:
        self._close()


def open_reader(db_arg: str | None) -> Reader:
    path = current_sqlite_file(resolve_url(db_arg))
    if path is not None:
        conn = sqlite_readonly_connection(path)
        return Reader(conn, conn.close, sql.SQLITE)
    db = open_db(db_arg, create=False)  # anything else: the full open (checks, errors, migrations)
    raw = db.engine.raw_connection()

    def close() -> None:
        raw.close()
        db.dispose()

    return Reader(raw, close, db.dialect)


def tail(path: str | None, lines: int) -> list[str]:
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64 * 1024))
        return [line.decode(errors="replace").rstrip("\n") for line in deque(f, maxlen=lines)]


def status_report(reader: Reader, run: str | None = None, tail_lines: int = 3, failed_shown: int = 5) -> dict:
    runs = reader.rows(RUNS_SQL)
    settings = {name: _json(value) for _, name, value in runs}
    if run is not None and run not in settings:
        raise unknown_run(run, list(settings))
    names = [run] if run is not None else list(settings)
    counts = {name: dict.fromkeys(STATES, 0) for name in names}
    for name, state, n in reader.rows(COUNTS_SQL):
        if name in counts:
            counts[name][state] = n
    failed = {
        name: _newest_failed(reader, name, failed_shown, tail_lines) if counts[name]["failed"] else [] for name in names
    }
    per_job: dict[str, dict[str, dict[str, int]]] = {name: {} for name in names}
    for name, backend, state, n in reader.rows(PER_JOB_COUNTS_SQL):
        if name in per_job:
            per_job[name].setdefault(backend, {})[state] = n
    # the runs shown whose submissions of one job each are few enough to list
    listed = [run_id for run_id, name, _ in runs if name in per_job and not too_many_to_list(per_job[name])]
    submissions: dict[str, list] = {name: [] for name in names}
    query = SUBMISSIONS_SQL.format(listed=", ".join(map(str, listed)) or "NULL")
    for name, sub_id, backend, mode, external_id, tasks, state, job_id, exit_code in reader.rows(query):
        if name in submissions:
            submissions[name].append(
                {
                    "id": sub_id,
                    "backend": backend,
                    "mode": mode,
                    "external_id": external_id,
                    "tasks": tasks,
                    "state": state,
                    "job_id": job_id,
                    "exit_code": exit_code,
                }
            )
    _add_live_states([s for subs in submissions.values() for s in subs])
    silent = _silent_workers(reader, {run_id: name for run_id, name, _ in runs})
    return {
        "runs": [
            {
                "run": name,
                "counts": counts[name],
                "silent": silent.get(name, {"jobs": 0, "workers": 0, "last_heartbeat_s": None}),
                "total": sum(counts[name].values()),
                "failed": failed[name],
                "submissions": submissions[name],
                "per_job_submissions": per_job[name],  # counts by backend and state
                "executes": (settings[name] or {}).get("executes", "workers"),
            }
            for name in names
        ]
    }


def _silent_workers(reader: Reader, run_names: dict[int, str]) -> dict[str, dict]:
    """Per run: its running jobs whose worker has missed MISSED_BEATS of its heartbeats, how many workers, and how
    long ago the most silent of them was last heard from."""
    found = {}
    for run_id, jobs, workers, oldest, now in reader.rows(SILENT_SQL):
        ago = (decode_time(now) - decode_time(oldest)).total_seconds()
        found[run_names[run_id]] = {"jobs": jobs, "workers": workers, "last_heartbeat_s": round(ago, 1)}
    return found


def _newest_failed(reader: Reader, run: str, shown: int, tail_lines: int) -> list[dict]:
    """The run's `shown` newest failed jobs, oldest first, with their logs' last lines."""
    rows = reader.rows(FAILED_SQL, {"run": run, "shown": shown})
    return [
        {
            "id": job_id,
            "name": name,
            "exit_code": exit_code,
            "signal": signal,
            "reason": reason,
            "log": log,
            "tail": tail(log, tail_lines),
        }
        for job_id, name, exit_code, signal, reason, log in reversed(rows)
    ]


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _add_live_states(submissions: list[dict]) -> None:
    """Each submission shows its live state, where its backend can tell one (Slurm's from squeue)."""
    from jobqueue.backends.base import get_backend

    by_backend: dict[str, list[dict]] = {}
    for s in submissions:
        by_backend.setdefault(s["backend"], []).append(s)
    for name, subs in by_backend.items():
        states = get_backend(name).live_states(subs)
        for s in subs:
            s["state"] = states.get(s["id"], s["state"])


def print_status(report: dict, console) -> None:
    from rich.table import Table

    if not report["runs"]:
        console.print("No runs yet: `jq enqueue SWEEP` adds one.")
        return
    table = Table(title_justify="left")
    table.add_column("run")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column("total", justify="right")
    for r in report["runs"]:
        table.add_row(r["run"], *[str(r["counts"][s]) for s in STATES], str(r["total"]))
    console.print(table)
    for r in report["runs"]:
        silent = r["silent"]
        if silent["jobs"]:
            whose = "a silent worker" if silent["workers"] == 1 else f"{silent['workers']} silent workers"
            console.print(
                f"[yellow]{r['run']}: {r['counts']['running']} running ({silent['jobs']} with {whose}: last heartbeat "
                f"{silent['last_heartbeat_s']:.0f} s ago — `jq resume` requeues {'it' if silent['jobs'] == 1 else 'them'} "
                "after the lease)[/yellow]"
            )
        for job in r["failed"]:
            why = f"exit code {job['exit_code']}" if job["signal"] is None else f"signal {job['signal']}"
            if job["reason"]:
                why += f": {job['reason']}"
            console.print(f"[red]failed[/red] {r['run']} job {job['id']} {job['name']} ({why}); log: {job['log']}")
            for line in job["tail"]:
                console.print(f"    {line}", markup=False)
        if r["executes"] == "direct":
            console.print(
                f"{r['run']}: jobs run directly on the backend, so the DB records submissions, not execution."
            )
        for s in r["submissions"]:
            what = f"{s['tasks']} workers" if s["mode"] == "workers" else f"job {s['job_id']}"
            console.print(
                f"{r['run']}: {s['backend']} {s['mode']} submission {s['external_id'] or '-'} ({what}): {s['state']}"
            )
        listed = {s["backend"] for s in r["submissions"] if s["mode"] == "per-job"}
        for backend, states in r["per_job_submissions"].items():
            if backend not in listed:  # too many to list: counted
                console.print(per_job_line(r["run"], backend, states))
