"""The `jq` command line: each command parses its options and calls one library function.

User mistakes (UserError) become one line on stderr and exit code 2; anything else is a bug.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from jobqueue.errors import UserError

app = typer.Typer(
    name="jq",
    help=(
        "jobqueue: run ML sweeps (seeds x hyperparameters x environments) from a queue that never loses a job.\n\n"
        "Typical session:\n\n"
        "  jq enqueue experiments.quickstart          # rows into ./jobqueue.db (idempotent)\n\n"
        "  jq worker --slots 2                        # claim and run jobs, 2 at a time\n\n"
        "  jq launch experiments.quickstart --max-parallel 4   # both, with live progress\n\n"
        "  jq status; jq list --state failed; jq logs 7; jq resume\n\n"
        "The DB is ./jobqueue.db unless --db or $JQ_DB says otherwise (a file path, or postgresql+psycopg://...)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Database tools: copy a queue between SQLite and PostgreSQL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DB_HELP = "Queue DB: a file path or an SQLAlchemy URL (postgresql+psycopg://user@host/db). Default: $JQ_DB, else ./jobqueue.db."
DbOption = typer.Option(None, "--db", help=DB_HELP, show_default=False)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open(db: Optional[str], create: bool = True):
    from jobqueue.db import open_db

    return open_db(db, create=create)


def _console():
    from rich.console import Console

    import shutil

    # Piped output keeps whole lines instead of rich's 80-column default.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else max(shutil.get_terminal_size().columns, 160))


# --- enqueue ---------------------------------------------------------------------------------------


@app.command()
def enqueue(
    sweep: str = typer.Argument(..., help="Sweep file: a dotted module importable from here (experiments.quickstart) or a path to a .py file."),
    train_dir: str = typer.Option("./train_dir", "--train-dir", help="Root directory passed to each job as --train_dir=DIR/RUN/EXPERIMENT_SUFFIX."),
    suffix: str = typer.Option("", "--suffix", "--experiment-suffix", help="Appended to each experiment's directory (Sample Factory's --experiment_suffix)."),
    db: Optional[str] = DbOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the jobs; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: a JSON array of {name, cmd, argv, root_dir, env}."),
) -> None:
    """Expand a sweep file into one job per experiment and add them to the queue.

    Idempotent: enqueueing the same sweep again adds nothing; a grown sweep (more seeds) adds only the new jobs.
    """
    from jobqueue import service

    plan = service.plan_sweep(sweep, train_dir=train_dir, suffix=suffix)
    if dry_run:
        if as_json:
            print(json.dumps([spec.as_json() for spec in plan.specs], indent=2))
        else:
            _print_plan(plan)
        return
    database = _open(db)
    result = service.enqueue_plan(database, plan)
    print(service.describe_enqueue(result, database))


def _print_plan(plan) -> None:
    from rich.table import Table

    table = Table(title=f"{plan.run_name}: {len(plan.specs)} jobs (dry run, nothing written)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("name", overflow="fold")
    table.add_column("command", overflow="fold")
    for spec in plan.specs:
        table.add_row(str(spec.index), spec.name, spec.cmd)
    _console().print(table)


# --- reading -------------------------------------------------------------------------------------


@app.command()
def status(
    run: Optional[str] = typer.Argument(None, help="Only this run."),
    db: Optional[str] = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable counts."),
    refresh: bool = typer.Option(False, "--refresh", help="Ask the backend (NGC) for the state of submitted jobs first."),
) -> None:
    """Jobs per state for each run, the last lines of failed jobs' logs, and the run's Slurm/NGC submissions."""
    from jobqueue import service

    database = _open(db, create=False)
    if refresh:
        service.refresh_submissions(database, run)
    report = service.status_report(database, run)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    service.print_status(report, _console())


@app.command("list")
def list_(
    run: Optional[str] = typer.Option(None, "--run", help="Only this run."),
    state: Optional[str] = typer.Option(None, "--state", help="Only jobs in this state: queued, running, succeeded, failed, timeout, cancelled."),
    db: Optional[str] = DbOption,
    as_json: bool = typer.Option(False, "--json", help="A JSON array of jobs."),
) -> None:
    """One line per job: id, run, name, state, attempts, exit code, command."""
    from jobqueue import service

    database = _open(db, create=False)
    rows = service.job_rows(database, run, state)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    service.print_jobs(rows, _console())


@app.command()
def logs(
    job: int = typer.Argument(..., help="Job id (see `jq list`)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing as the log grows, until the job ends."),
    attempt: Optional[int] = typer.Option(None, "--attempt", help="Which attempt (default: the latest)."),
    db: Optional[str] = DbOption,
) -> None:
    """Print a job's log (stdout and stderr of its latest attempt)."""
    from jobqueue import service

    service.show_log(_open(db, create=False), job, follow=follow, attempt=attempt)


@app.command()
def sql(
    query: str = typer.Argument(..., help='One read-only statement, e.g. "select state, count(*) from jobs group by state".'),
    db: Optional[str] = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Rows as a JSON array of objects."),
    as_csv: bool = typer.Option(False, "--csv", help="Rows as CSV with a header."),
) -> None:
    """Run a read-only SQL query on the queue (tables: runs, jobs, attempts, workers, submissions)."""
    from jobqueue import service

    columns, rows = service.read_only_query(_open(db, create=False), query)
    service.print_rows(columns, rows, as_json=as_json, as_csv=as_csv, console=_console())


# --- entry point ---------------------------------------------------------------------------------

# Sample Factory's launcher flags take underscores and `=True/False`; typer's take dashes and bare flags.
_SF_BOOL_FLAGS = {"--slurm-print-only", "--ngc-print-only"}


def normalize_sf_argv(argv: list[str]) -> list[str]:
    """Rewrite Sample Factory spellings (`--max_parallel=8`, `--slurm_print_only=False`) into ours."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg.partition("=")
            name = name.replace("_", "-")
            if name in _SF_BOOL_FLAGS and eq:
                if value.strip().lower() in ("1", "true", "yes", "y", "t", "on"):
                    out.append(name)
                continue
            arg = name + eq + value
        out.append(arg)
    return out


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("launch", "resume"):
        argv = argv[:1] + normalize_sf_argv(argv[1:])
    try:
        app(args=argv, prog_name=Path(sys.argv[0]).name if sys.argv[0] not in ("-m", "-c") else "jq")
    except UserError as exc:
        _stderr(f"jq: error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        _stderr("jq: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
