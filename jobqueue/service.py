"""What each `jq` command does, as functions tests can call: plan and enqueue a sweep, report, query."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass

from jobqueue import queue, settings
from jobqueue.db import Database
from jobqueue.paths import redacted, sqlite_readonly_connection
from jobqueue.errors import UserError
from jobqueue.loader import LoadedSweep, load_sweep
from jobqueue.report import tail
from jobqueue.states import JobState
from jobqueue.sweep import JobSpec, expand

@dataclass
class SweepPlan:
    loaded: LoadedSweep
    run_name: str
    specs: list[JobSpec]
    train_dir: str
    suffix: str
    launch_settings: dict  # the sweep file's RunDescription keywords, checked (jobqueue.settings.parse)


def plan_sweep(target: str, *, train_dir: str = "./train_dir", suffix: str = "") -> SweepPlan:
    """Load a sweep file and expand it, touching no database."""
    loaded = load_sweep(target)
    shown = os.path.relpath(loaded.path)
    try:
        specs = expand(loaded.run, train_dir=train_dir, suffix=suffix)
    except UserError as exc:
        raise UserError(f"{shown}: {exc}") from None
    launch_settings = settings.parse(loaded.run.launch_defaults, settings.Source("sweep", shown))
    return SweepPlan(loaded, queue.run_key(loaded.run.run_name, suffix), specs, train_dir, suffix, launch_settings)


def enqueue_plan(db: Database, plan: SweepPlan, max_attempts: int | None = None) -> queue.EnqueueResult:
    """Add the plan's jobs; its RunDescription keywords become the run's settings until a launch records its own."""
    recorded = {"version": settings.STORED_VERSION, **plan.launch_settings} if plan.launch_settings else None
    return queue.enqueue(
        db, plan.run_name, plan.specs, sweep=plan.loaded.target, train_dir=plan.train_dir, suffix=plan.suffix,
        settings=recorded, max_attempts=max_attempts or plan.launch_settings.get("max_attempts"),
    )


def describe_enqueue(result: queue.EnqueueResult, db: Database) -> str:
    where = os.path.relpath(db.path) if db.path else redacted(db.url)
    total = result.added + result.existing
    if result.added == 0:
        line = f"Nothing to add: all {total} jobs of run {result.run_name!r} are already in {where}."
    else:
        line = f"Enqueued {result.added} new jobs for run {result.run_name!r} in {where} ({result.existing} were already there)."
    if result.changed:
        line += (f"\nNote: {len(result.changed)} jobs already queued under the same name now expand to a different command "
                 f"(e.g. {result.changed[0]!r}); they keep their old command. Use --suffix for a separate run.")
    return line


# --- list ----------------------------------------------------------------------------------------


LISTED = ("id", "run", "name", "state", "attempts", "exit_code", "signal", "cmd")  # what `jq list` prints of a job
DETAILS = ("params", "argv", "env", "cwd", "started_at", "ended_at")  # and what `jq list --json` adds


def job_rows(db: Database, run: str | None, state: str | None, tail_lines: int = 3, details: bool = True) -> list[dict]:
    """The jobs, with the log path and last lines of each failed one. Without details, only what `jq list`
    prints is read: the JSON and time columns are the costly ones to decode."""
    if state is not None and state not in {s.value for s in JobState}:
        raise UserError(f"--state {state}: unknown state; use one of {', '.join(s.value for s in JobState)}")
    keys = LISTED + DETAILS if details else LISTED
    rows = queue.list_jobs(db, run, state, columns=", ".join(f"jobs.{k}" for k in keys if k != "run"))
    unhappy = [r["id"] for r in rows if r["state"] in (JobState.FAILED.value, JobState.TIMEOUT.value)]
    last = queue.last_attempts(db, unhappy)
    return [
        {**{k: r[k] for k in keys},
         **({"log": last[r["id"]]["log_path"], "tail": tail(last[r["id"]]["log_path"], tail_lines)} if r["id"] in last else {})}
        for r in rows
    ]


def aligned(columns: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Plain text in columns two spaces apart (those in `right` right-aligned), the last one unpadded: a long
    command stays whole, to be copied into a shell or grepped. Written at once as plain text, it stays fast for any
    number of rows, where a rich Table or a print per line does work per row."""
    widths = [max(len(c), max((len(r[i]) for r in rows), default=0)) for i, c in enumerate(columns)]
    pads = [(str.rjust if i in right else str.ljust, w) for i, w in enumerate(widths[:-1])]
    return "\n".join("  ".join([pad(cell, w) for (pad, w), cell in zip(pads, r)] + [r[-1]]) for r in [columns, *rows])


def print_jobs(rows: list[dict], console) -> None:
    """One line per job; the command last and whole, so the line can be copied into a shell."""
    if not rows:
        console.print("No jobs match.")
        return
    lines = []
    for r in rows:
        exit_ = "" if r["exit_code"] is None else str(r["exit_code"])
        if r["signal"] is not None:
            exit_ = f"sig{r['signal']}"
        lines.append([str(r["id"]), r["run"], r["name"], r["state"], str(r["attempts"]), exit_, r["cmd"]])
    header = ["id", "run", "name", "state", "tries", "exit", "command"]
    console.file.write(aligned(header, lines, right=frozenset({0, 4, 5})) + "\n")
    for r in rows:
        if r.get("tail"):
            console.print(f"[red]{r['state']}[/red] job {r['id']} {r['name']}: last lines of {r['log']}")
            for line in r["tail"]:
                console.print(f"    {line}", markup=False)


# --- logs ----------------------------------------------------------------------------------------


def show_log(db: Database, job_id: int, *, follow: bool = False, attempt: int | None = None, out=None) -> None:
    out = out or sys.stdout
    tries = queue.job_attempts(db, job_id)
    if not tries:
        raise UserError(f"job {job_id} has not run yet, so it has no log")
    chosen = tries[-1] if attempt is None else next((a for a in tries if a["number"] == attempt), None)
    if chosen is None:
        raise UserError(f"job {job_id} has no attempt {attempt}; it has {len(tries)}")
    path = chosen["log_path"]
    deadline_missing = time.monotonic() + 10
    while not os.path.exists(path):
        if not follow or time.monotonic() > deadline_missing:
            raise UserError(f"log {path} of job {job_id} does not exist (deleted, or on another machine)")
        time.sleep(0.2)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            if not follow:
                return
            current = queue.job_attempts(db, job_id)[-1]
            if current["state"] != "running" and current["id"] == chosen["id"]:
                rest = f.read()
                if rest:
                    out.buffer.write(rest) if hasattr(out, "buffer") else out.write(rest.decode(errors="replace"))
                    out.flush()
                return
            time.sleep(0.25)


# --- read-only SQL -------------------------------------------------------------------------------

TABLES = "runs, jobs, attempts, workers, submissions, metric_points, metric_summaries, metric_sources"
READ_ONLY_REFUSAL = "jq sql is read-only and this statement would write ({}); change jobs with jq cancel / jq retry"


def read_only_query(db: Database, query: str) -> tuple[list[str], list[tuple]]:
    """Run one statement on a connection that cannot write. A write is refused with a clear error."""
    if db.is_sqlite:
        conn = sqlite_readonly_connection(db.path)
        conn.set_authorizer(_deny_attach)
        try:
            cursor = conn.execute(query)
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or []]
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "readonly" in text or "not authorized" in text:
                raise UserError(READ_ONLY_REFUSAL.format(text)) from None
            raise UserError(f"jq sql: {text}; check the query (tables: {TABLES})") from None
        except sqlite3.Warning as exc:
            raise UserError(f"jq sql: {exc}; give one statement") from None
        finally:
            conn.close()
        return columns, rows
    import sqlalchemy as sa

    with db.engine.connect() as conn:
        try:
            with conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                result = conn.exec_driver_sql(query)
                columns = list(result.keys()) if result.returns_rows else []
                rows = [tuple(r) for r in result] if result.returns_rows else []
        except sa.exc.DBAPIError as exc:
            text = str(exc.orig).strip().splitlines()[0]
            if "read-only transaction" in text:
                raise UserError(READ_ONLY_REFUSAL.format(text)) from None
            raise UserError(f"jq sql: {text}; check the query (tables: {TABLES})") from None
    return columns, rows


def _deny_attach(action, *args):
    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


def print_rows(columns: list[str], rows: list[tuple], *, as_json: bool, as_csv: bool, console) -> None:
    if as_json:
        print(json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str))
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        cells = [["" if v is None else str(v).replace("\n", "\\n") for v in r] for r in rows]
        numeric = frozenset(i for i in range(len(columns)) if rows and all(isinstance(r[i], (int, float, type(None))) for r in rows))
        console.file.write(aligned(columns, cells, right=numeric) + "\n")


def refresh_submissions(db: Database, run: str | None) -> None:
    """Ask NGC for the state of the run's submitted jobs (Slurm states are read live by status)."""
    from jobqueue.backends import ngc

    ngc.refresh_states(db, run)
