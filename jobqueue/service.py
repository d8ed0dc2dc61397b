"""What each `jq` command does, as functions tests can call: plan and enqueue a sweep, report, query."""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

from jobqueue import layout, queue, settings
from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.loader import LoadedSweep, load_sweep
from jobqueue.paths import redacted, sqlite_readonly_connection
from jobqueue.report import tail
from jobqueue.states import JobState
from jobqueue.sweep import SweepJobs, expand


@dataclass
class SweepPlan:
    loaded: LoadedSweep
    run_name: str
    specs: SweepJobs  # made as they are read: a big sweep is never all in memory
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
        db,
        plan.run_name,
        plan.specs,
        sweep=plan.loaded.target,
        train_dir=plan.train_dir,
        suffix=plan.suffix,
        settings=recorded,
        max_attempts=max_attempts or plan.launch_settings.get("max_attempts"),
    )


def describe_enqueue(result: queue.EnqueueResult, db: Database) -> str:
    where = os.path.relpath(db.path) if db.path else redacted(db.url)
    total = result.added + result.existing
    if result.added == 0:
        line = f"Nothing to add: all {total} jobs of run {result.run_name!r} are already in {where}."
    else:
        line = f"Enqueued {result.added} new jobs for run {result.run_name!r} in {where} ({result.existing} were already there)."
    if result.changed:
        line += (
            f"\nNote: {result.changed} jobs already queued under the same name now expand to a different command "
            f"(e.g. {result.first_changed!r}); they keep their old command. Use --suffix for a separate run."
        )
    return line


# --- list ----------------------------------------------------------------------------------------


LISTED = ("id", "run", "name", "state", "attempts", "exit_code", "signal", "cmd")  # what `jq list` prints of a job
DETAILS = ("params", "argv", "env", "cwd", "started_at", "ended_at")  # and what `jq list --json` adds


def job_rows(
    db: Database, run: str | None, state: str | None, tail_lines: int = 3, details: bool = True
) -> Iterator[dict]:
    """The jobs, oldest first, with the log path and last lines of each failed one, read a page at a time (an
    unknown run is found at the first). Without details, only what `jq list` prints is read: the JSON and time
    columns are the costly ones to decode."""
    if state is not None and state not in {s.value for s in JobState}:
        raise UserError(f"--state {state}: unknown state; use one of {', '.join(s.value for s in JobState)}")
    return _job_rows(db, run, state, LISTED + DETAILS if details else LISTED, tail_lines)


def _job_rows(
    db: Database, run: str | None, state: str | None, keys: tuple[str, ...], tail_lines: int
) -> Iterator[dict]:
    columns = ", ".join(f"jobs.{k}" for k in keys if k != "run")
    with db.reading() as tx:
        for page in queue.job_pages(tx, run, state, columns):
            unhappy = [r["id"] for r in page if r["state"] in (JobState.FAILED.value, JobState.TIMEOUT.value)]
            last = queue.newest_attempts(tx, unhappy) if unhappy else {}
            for r in page:
                row = {k: r[k] for k in keys}
                if r["id"] in last:
                    row["log"] = last[r["id"]]["log_path"]
                    row["tail"] = tail(row["log"], tail_lines)
                yield row


def write_json_list(items: Iterable, out, default: Callable | None = None) -> None:
    """What print(json.dumps(list(items), indent=2, default=default)) writes, one item at a time."""
    items = iter(items)
    first = next(items, _NOTHING)  # an error in reading the first item comes before any output
    if first is _NOTHING:
        out.write("[]\n")
        return
    out.write("[")
    for i, item in enumerate(chain([first], items)):
        # Inside the list each line is indented one level more; JSON strings hold no raw newlines.
        out.write(("," if i else "") + "\n  " + json.dumps(item, indent=2, default=default).replace("\n", "\n  "))
    out.write("\n]\n")


_NOTHING = object()


def print_jobs(rows: Iterable[dict], console) -> None:
    """One line per job; the command last and whole, so the line can be copied into a shell. The last lines of
    failed jobs' logs follow the jobs (of each page of a long listing)."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        console.print("No jobs match.")
        return
    table = layout.AlignedTable(
        console.file, ["id", "run", "name", "state", "tries", "exit", "command"], frozenset({0, 4, 5})
    )
    for page in layout.pages(chain([first], rows), layout.ALIGN_ROWS):
        lines = []
        for r in page:
            exit_ = "" if r["exit_code"] is None else str(r["exit_code"])
            if r["signal"] is not None:
                exit_ = f"sig{r['signal']}"
            lines.append([str(r["id"]), r["run"], r["name"], r["state"], str(r["attempts"]), exit_, r["cmd"]])
        table.write(lines)
        for r in page:
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


FETCH_ROWS = 1000
# What PostgreSQL can read through a server-side cursor: DECLARE ... CURSOR FOR takes queries, not other statements.
_QUERY = re.compile(r"\s*(select|with|values|table)\b", re.IGNORECASE)


@contextmanager
def read_only_query(db: Database, query: str) -> Iterator[tuple[list[str], Iterator[tuple]]]:
    """Run one statement on a connection that cannot write: its columns, and its rows as they are read (within the
    with block; on PostgreSQL from a server-side cursor). A write is refused with a clear error."""
    if db.path is not None:
        conn = sqlite_readonly_connection(db.path)
        conn.set_authorizer(_deny_attach)
        try:
            with _sqlite_errors():
                cursor = conn.execute(query)
            yield [d[0] for d in cursor.description or []], _fetched(cursor.fetchmany, _sqlite_errors)
        finally:
            conn.close()
        return
    with db.engine.connect() as pg, _postgres_errors(), pg.begin():
        pg.exec_driver_sql("SET TRANSACTION READ ONLY")
        if _QUERY.match(query):
            pg = pg.execution_options(stream_results=True, max_row_buffer=FETCH_ROWS)
        result = pg.exec_driver_sql(query)
        if not result.returns_rows:
            yield [], iter(())
            return
        yield list(result.keys()), _fetched(result.fetchmany, _postgres_errors)


def _fetched(fetchmany: Callable[[int], Sequence[Any]], errors: Callable) -> Iterator[tuple]:
    while True:
        with errors():
            rows = fetchmany(FETCH_ROWS)
        if not rows:
            return
        yield from map(tuple, rows)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "readonly" in text or "not authorized" in text:
            raise UserError(READ_ONLY_REFUSAL.format(text)) from None
        raise UserError(f"jq sql: {text}; check the query (tables: {TABLES})") from None
    except sqlite3.Warning as exc:
        raise UserError(f"jq sql: {exc}; give one statement") from None


@contextmanager
def _postgres_errors() -> Iterator[None]:
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.DBAPIError as exc:
        text = str(exc.orig).strip().splitlines()[0]
        if "read-only transaction" in text or "data-modifying" in text:
            raise UserError(READ_ONLY_REFUSAL.format(text)) from None
        raise UserError(f"jq sql: {text}; check the query (tables: {TABLES})") from None


def _deny_attach(action, *args):
    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


def print_rows(columns: list[str], rows: Iterable[tuple], *, as_json: bool, as_csv: bool, console) -> None:
    """`jq sql`'s rows, written as they come: JSON objects, CSV, or aligned columns, those whose values are all
    numbers (on the first page) right-aligned."""
    if as_json:
        write_json_list((dict(zip(columns, r)) for r in rows), sys.stdout, default=str)
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif columns:
        pages = layout.pages(rows, layout.ALIGN_ROWS)
        first = next(pages, [])
        numeric = frozenset(
            i for i in range(len(columns)) if first and all(isinstance(r[i], (int, float, type(None))) for r in first)
        )
        table = layout.AlignedTable(console.file, columns, numeric)
        for page in chain([first], pages):
            table.write([["" if v is None else str(v).replace("\n", "\\n") for v in r] for r in page])


def refresh_submissions(db: Database, run: str | None) -> None:
    """Ask NGC for the state of the run's submitted jobs (Slurm states are read live by status)."""
    from jobqueue.backends import ngc

    ngc.refresh_states(db, run)
