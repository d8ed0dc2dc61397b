"""The `jq` command line: each command parses its options and calls one library function.

User mistakes (UserError) become one line on stderr and exit code 2; anything else is a bug.
"""

import json
import os
import sys
from pathlib import Path

import typer

from jobqueue import completion
from jobqueue.errors import UserError


def _new_app(help: str | None = None, no_args_is_help: bool = False) -> typer.Typer:
    """The whole app, or a one-command app of _app_for: the same settings."""
    return typer.Typer(
        name="jq",
        help=help,
        no_args_is_help=no_args_is_help,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


# A new command or group goes in jobqueue/passthrough.py's COMMANDS too, or `jq NEW` goes to the JSON jq.
app = _new_app(
    help=(
        "jobqueue: run ML sweeps (seeds x hyperparameters x environments) from a queue that never loses a job.\n\n"
        "\b\nTypical session:\n"
        "  jq enqueue experiments.quickstart                   # rows into ./jobqueue.db (idempotent)\n"
        "  jq worker --slots 2                                 # claim and run jobs, 2 at a time\n"
        "  jq launch experiments.quickstart --max-parallel 4   # both, with live progress\n"
        "  jq status; jq list --state failed; jq logs 7; jq resume\n\n"
        "The DB is ./jobqueue.db unless --db or $JQ_DB says otherwise (a file path, or postgresql+psycopg://...). "
        "`jq COMMAND --help` explains each command.\n\n"
        "`jq` shares its name with the JSON processor: a first argument that is not a jobqueue command "
        "(`jq .a`, `jq -r ...`) goes to the next `jq` on PATH, so scripts that parse JSON keep working. "
        "`jobqueue` is the same CLI without the hand-over."
    ),
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database tools: copy a queue between SQLite and PostgreSQL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DB_HELP = "Queue DB: a file path or an SQLAlchemy URL (postgresql+psycopg://user@host/db). Default: $JQ_DB, else ./jobqueue.db."
DbOption = typer.Option(None, "--db", help=DB_HELP, show_default=False)


# Every top-level command: its name -> (function, app.command's keywords), for _app_for.
_COMMANDS: dict[str, tuple] = {}


def command(name: str | None = None, **options):
    """app.command, remembering the command so that _app_for can build an app of it alone."""

    def register(fn):
        _COMMANDS[name or fn.__name__.replace("_", "-")] = (fn, {"name": name, **options})
        return app.command(name, **options)(fn)

    return register


def _stderr(message: str) -> None:
    """A line for the user on stderr, with any DB password this process knows shown as ***."""
    from jobqueue.paths import scrub

    print(scrub(message), file=sys.stderr, flush=True)


def _open(db: str | None, create: bool = True):
    from jobqueue.db import open_db

    return open_db(db, create=create)


def _console():
    import shutil

    from rich.console import Console

    # Piped output keeps whole lines instead of rich's 80-column default.
    return Console(
        highlight=False,
        soft_wrap=True,
        width=None if sys.stdout.isatty() else max(shutil.get_terminal_size().columns, 160),
    )


# --- enqueue ---------------------------------------------------------------------------------------


@command()
def enqueue(
    sweep: str = typer.Argument(
        ..., help="Sweep file: a dotted module importable from here (experiments.quickstart) or a path to a .py file."
    ),
    train_dir: str = typer.Option(
        "./train_dir", "--train-dir", help="Root directory passed to each job as --train_dir=DIR/RUN/EXPERIMENT_SUFFIX."
    ),
    suffix: str = typer.Option(
        "",
        "--suffix",
        "--experiment-suffix",
        help="Appended to each experiment's directory (Sample Factory's --experiment_suffix).",
    ),
    db: str | None = DbOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the jobs; write nothing."),
    as_json: bool = typer.Option(
        False, "--json", help="With --dry-run: a JSON array of {name, cmd, argv, root_dir, env}."
    ),
) -> None:
    """Expand a sweep file into one job per experiment and add them to the queue.

    Idempotent: enqueueing the same sweep again adds nothing; a grown sweep (more seeds) adds only the new jobs.
    """
    from jobqueue import service

    plan = service.plan_sweep(sweep, train_dir=train_dir, suffix=suffix)
    if dry_run:
        if as_json:
            service.write_json_list((spec.as_json() for spec in plan.specs), sys.stdout)
        else:
            _print_plan(plan)
        return
    database = _open(db)
    result = service.enqueue_plan(database, plan)
    print(service.describe_enqueue(result, database))


def _print_plan(plan) -> None:
    from jobqueue.layout import write_aligned

    print(f"{plan.run_name}: {len(plan.specs)} jobs (dry run, nothing written)")
    rows = ([str(spec.index), spec.name, spec.cmd] for spec in plan.specs)
    write_aligned(sys.stdout, ["#", "name", "command"], rows, right=frozenset({0}))


# --- reading -------------------------------------------------------------------------------------


@command()
def status(
    run: str | None = typer.Argument(None, help="Only this run.", autocompletion=completion.run_names),
    db: str | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable counts."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Ask the backend (NGC) for the state of submitted jobs first."
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="Show the run's live progress (as jq launch does) until no job is queued or running; exits 1 if a job failed. For runs whose workers run elsewhere (Slurm, NGC, other hosts).",
    ),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="With --watch: seconds between readings."),
    sort: str | None = typer.Option(
        None, "--sort", help="Show the best job so far on this metric (default: the run's first-logged)."
    ),
    minimize: bool = typer.Option(False, "--min", help="With --sort: the best is the lowest."),
) -> None:
    """Jobs per state for each run, the last lines of failed jobs' logs, the run's Slurm/NGC submissions, and its
    best job so far on a metric."""
    from jobqueue import report as reports

    if watch:
        from jobqueue import launch as launching, queue as q

        database = _open(db, create=False)
        name = run or (q.only_run(database) or {}).get("name")
        if name is None:
            raise UserError(
                "name the run to watch, e.g. `jq status quickstart --watch`: this DB holds several runs, or none"
            )
        raise typer.Exit(launching.watch_run(database, name, interval=interval))
    if refresh:
        from jobqueue import service

        service.refresh_submissions(_open(db, create=False), run)
    from jobqueue import results

    reader = reports.open_reader(db)
    try:
        report = reports.status_report(reader, run)
        best = results.runs_best(reader, [r["run"] for r in report["runs"]], sort, minimize, strict=run is not None)
        for r in report["runs"]:
            r["best"] = best[r["run"]]
    finally:
        reader.close()
    if as_json:
        print(json.dumps(results.jsonable(report), indent=2, default=str))
        return
    reports.print_status(report, _console())
    for r in report["runs"]:
        line = results.best_line(r["run"], r["best"])
        if line:
            print(line)


@command("list")
def list_(
    run: str | None = typer.Option(None, "--run", help="Only this run.", autocompletion=completion.run_names),
    state: str | None = typer.Option(
        None,
        "--state",
        help="Only jobs in this state: queued, running, succeeded, failed, timeout, cancelled.",
        autocompletion=completion.states,
    ),
    db: str | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="A JSON array of jobs."),
) -> None:
    """One line per job: id, run, name, state, attempts, exit code, command."""
    from jobqueue import service

    database = _open(db, create=False)
    rows = service.job_rows(database, run, state, details=as_json)
    if as_json:
        service.write_json_list(rows, sys.stdout, default=str)
        return
    service.print_jobs(rows, _console())


@command()
def logs(
    job: int = typer.Argument(..., help="Job id (see `jq list`).", autocompletion=completion.job_ids),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing as the log grows, until the job ends."),
    attempt: int | None = typer.Option(None, "--attempt", help="Which attempt (default: the latest)."),
    db: str | None = DbOption,
) -> None:
    """Print a job's log (stdout and stderr of its latest attempt)."""
    from jobqueue import service

    service.show_log(_open(db, create=False), job, follow=follow, attempt=attempt)


@command()
def sql(
    query: str = typer.Argument(
        ..., help='One read-only statement, e.g. "select state, count(*) from jobs group by state".'
    ),
    db: str | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Rows as a JSON array of objects."),
    as_csv: bool = typer.Option(False, "--csv", help="Rows as CSV with a header."),
) -> None:
    """Run a read-only SQL query on the queue (tables: runs, jobs, attempts, workers, submissions, metric_points,
    metric_summaries, metric_sources; docs/database.md has recipes)."""
    from jobqueue import service

    with service.read_only_query(_open(db, create=False), query) as (columns, rows):
        service.print_rows(columns, rows, as_json=as_json, as_csv=as_csv, console=_console())


TABLE_METRICS = 6  # metric columns the results table shows unless --metric says which


@command("results")
def show_results(
    run: str = typer.Argument(..., help="The run.", autocompletion=completion.run_names),
    sort: str | None = typer.Option(
        None, "--sort", help="Best first by this metric's last value (highest first; NaN last)."
    ),
    minimize: bool = typer.Option(False, "--min", help="With --sort: lowest first, for losses."),
    group_by: list[str] | None = typer.Option(
        None,
        "--group-by",
        help="One row per value of this parameter (repeat it, or lr,seed, for combinations): the mean ± std over its jobs (seeds, say) of each metric's last value.",
    ),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        help="Only this metric (repeat it for several). Default: all with --json and --csv; the table shows the first few, since a Sample Factory run logs 51.",
    ),
    db: str | None = DbOption,
    as_json: bool = typer.Option(
        False,
        "--json",
        help='A JSON list: {"id", "name", "state", "params", "duration_s", "metrics": {KEY: {"last", "last_step", "min", "max", "count"}}} per job, or {"group", "jobs", "metrics": {KEY: {"mean", "std", "min", "max"}}} per group.',
    ),
    as_csv: bool = typer.Option(
        False, "--csv", help="CSV: each metric's last value per job; grouped, KEY.mean, KEY.std, KEY.min, KEY.max."
    ),
) -> None:
    """What each job of a run achieved: one row per job (its parameters, duration over its attempts and each
    metric's last value), or per --group-by combination.

    Jobs log metrics with jobqueue.log_metrics(step=..., reward=...) or TensorBoard event files under their
    {--train_dir}/{--experiment}/ (Sample Factory's); the worker stores them as the jobs run.
    """
    from jobqueue import report as reports, results

    group_by = [name for given in group_by or [] for name in given.split(",") if name]
    reader = reports.open_reader(db)
    try:
        if as_json:  # every metric, and no columns to know beforehand
            results.write_json(results.results(reader, run, sort, minimize, group_by, metric or ()), sys.stdout)
            return
        columns = results.result_columns(reader, run, metric or (), params=as_csv)
        hidden = 0
        if not (metric or as_csv) and len(columns.metrics) > TABLE_METRICS:
            shown = ([sort] if sort in columns.metrics else []) + [k for k in columns.metrics if k != sort]
            hidden = len(shown) - TABLE_METRICS
            columns.metrics = shown[:TABLE_METRICS]
        if group_by:
            groups = results.results(reader, run, sort, minimize, group_by, columns.metrics)
            write_groups = results.write_groups_csv if as_csv else results.write_groups_table
            write_groups(groups, sys.stdout, columns, group_by)
        elif as_csv:
            results.write_jobs_csv(results.job_pages(reader, run, columns.metrics, sort, minimize), sys.stdout, columns)
        else:
            every_param = lambda: results.run_param_names(reader, columns.run_id)  # noqa: E731
            pages = results.job_pages(reader, run, columns.metrics, sort, minimize)
            results.write_jobs_table(pages, sys.stdout, columns, every_param)
    finally:
        reader.close()
    if not columns.metrics and not as_csv:
        _stderr(
            f"{run}: no job has logged metrics yet (jobqueue.log_metrics, or TensorBoard event files under "
            "{--train_dir}/{--experiment}/)"
        )
    elif hidden:
        _stderr(
            f"{hidden} more {'metric' if hidden == 1 else 'metrics'} not shown: choose with --metric KEY, "
            "or see them all with --json or --csv"
        )


@command("metrics")
def show_metrics(
    job: int = typer.Argument(..., help="Job id (see `jq list` or `jq results`).", autocompletion=completion.job_ids),
    keys: list[str] | None = typer.Argument(None, help="Only these metrics (default: all the job logged)."),
    db: str | None = DbOption,
    as_json: bool = typer.Option(
        False, "--json", help='A JSON list of {"attempt", "key", "step", "value", "wall_time"}.'
    ),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: attempt, key, step, value, wall_time."),
) -> None:
    """A job's metric points, attempt by attempt, each key in step order; then the files they came from, with
    the bad lines or records skipped in each."""
    from jobqueue import report as reports, results

    reader = reports.open_reader(db)
    try:
        keys = keys or results.job_metric_keys(reader, job)
        points = results.metrics(reader, job, keys)
        if as_json:
            results.write_json(points, sys.stdout)
        elif as_csv:
            results.write_points_csv(points, sys.stdout)
        else:
            if keys:
                for line in results.points_table(points, keys):
                    print(line)
            else:
                print(f"job {job}: no metrics yet")
            for line in results.source_lines(results.metric_sources(reader, job)):
                print(line)
    finally:
        reader.close()


@command()
def ui(
    db: str | None = DbOption,
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to serve on (0: any free one)."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on. The default serves this machine only: reach it from yours with `ssh -L 8080:localhost:8080 HOST`.",
    ),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between the pages' polls."),
) -> None:
    """Serve a read-only web page of the runs, their jobs, attempt timelines, logs and results, live while they run."""
    from jobqueue import ui as dashboard  # bottle is imported by `jq ui` alone

    dashboard.serve(db, host=host, port=port, interval=interval)


# --- running -------------------------------------------------------------------------------------


@command()
def worker(
    gpu: str | None = typer.Option(
        None,
        "--gpu",
        help="GPUs for this worker's jobs: 0, or 0,1 (each job gets both), or none (default: CUDA_VISIBLE_DEVICES as inherited).",
    ),
    slots: int = typer.Option(1, "--slots", min=1, help="How many jobs run at once."),
    run: str | None = typer.Option(
        None,
        "--run",
        help="Only take jobs of this run (default: any run, oldest job first).",
        autocompletion=completion.run_names,
    ),
    job: int | None = typer.Option(
        None, "--job", help="Only take this one job (Slurm/NGC per-job mode).", autocompletion=completion.job_ids
    ),
    experiments_per_gpu: int = typer.Option(
        -1,
        "--experiments-per-gpu",
        help="With --gpu 0,1,...: pin each job to ONE of them, the least busy, at most K jobs per GPU.",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Keep polling for new jobs until SIGTERM instead of exiting when the queue is drained."
    ),
    pause_between: float = typer.Option(
        0.0, "--pause-between", min=0, help="Seconds between two job starts (Sample Factory's throttle; 0 here)."
    ),
    grace: float = typer.Option(
        30.0, "--grace", min=0, help="On SIGTERM/SIGINT/SIGUSR1: seconds jobs get after TERM before KILL."
    ),
    heartbeat: float = typer.Option(5.0, "--heartbeat", min=0.05, help="Seconds between heartbeats."),
    lease: float = typer.Option(
        60.0, "--lease", min=0.1, help="A worker on another host silent this long is lost; its jobs are requeued."
    ),
    reap_every: float = typer.Option(30.0, "--reap-every", min=0.1, help="Seconds between checks for lost workers."),
    metrics_every: float = typer.Option(
        30.0,
        "--metrics-every",
        min=0,
        help="Seconds between reads of a running job's metrics (jobqueue.log_metrics, TensorBoard event files) into the DB; 0: only when it ends.",
    ),
    backend: str = typer.Option("processes", "--backend", hidden=True),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    db: str | None = DbOption,
) -> None:
    """Claim queued jobs and run them, N at a time, until the queue is drained.

    Each job runs in its recorded working directory, in its own process group, with JQ_JOB_ID, JQ_RUN,
    JQ_ATTEMPT and JQ_SLOT set. A command whose first word starts with `python` runs under this worker's
    own interpreter, as in Sample Factory. Logs: under the job's train dir, in jq_logs/ (see `jq logs`).
    Exits 1 if a job it ran failed; on SIGTERM/SIGINT/SIGUSR1 it hands its jobs back to the queue.
    """
    from jobqueue import queue as q
    from jobqueue.worker import Worker, WorkerSettings, parse_gpus

    database = _open(db, create=False)
    run_id = q.get_run(database, run)["id"] if run else None
    settings = WorkerSettings(
        slots=slots,
        gpus=parse_gpus(gpu),
        experiments_per_gpu=experiments_per_gpu,
        run_id=run_id,
        job_id=job,
        wait=wait,
        pause_between=pause_between,
        grace=grace,
        heartbeat_interval=heartbeat,
        lease=lease,
        reap_interval=reap_every,
        metrics_every=metrics_every,
        backend=backend,
        quiet=quiet,
    )
    result = Worker(database, settings).run()
    if not quiet:
        _stderr(f"jq worker: ran {result.ran} attempts, {result.failed} failed, {result.interrupted} handed back")
    raise typer.Exit(result.exit_code)


def _given(**flags) -> dict:
    """The settings flags given on this command line, under their stored names (jobqueue.settings)."""
    return {k: v for k, v in flags.items() if v is not None}


@command(context_settings={"allow_interspersed_args": True})
def launch(
    sweep: str | None = typer.Argument(
        None, help="Sweep file: dotted module or .py path (or --run=MODULE, as in Sample Factory)."
    ),
    run_module: str | None = typer.Option(None, "--run", help="Sample Factory's spelling of SWEEP."),
    backend: str | None = typer.Option(None, "--backend", help="processes (this machine), slurm or ngc."),
    num_gpus: int | None = typer.Option(
        None, "--num-gpus", help="GPUs 0..N-1 to spread jobs over (with --experiments-per-gpu)."
    ),
    gpus: str | None = typer.Option(None, "--gpus", help="Exactly these GPUs, e.g. 0,2 (instead of --num-gpus)."),
    experiments_per_gpu: int | None = typer.Option(
        None, "--experiments-per-gpu", help="Jobs per GPU; -1 (default) leaves CUDA_VISIBLE_DEVICES alone."
    ),
    max_parallel: int | None = typer.Option(None, "--max-parallel", min=1, help="Most jobs at once (default 4)."),
    pause_between: float | None = typer.Option(
        None, "--pause-between", min=0, help="Seconds between job starts (default 0)."
    ),
    train_dir: str = typer.Option("./train_dir", "--train-dir", help="Root directory for the jobs' --train_dir."),
    experiment_suffix: str = typer.Option(
        "", "--experiment-suffix", "--suffix", help="Appended to each experiment's directory."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0, help="Seconds before a job is stopped and recorded as timeout."
    ),
    max_attempts: int | None = typer.Option(
        None, "--max-attempts", min=1, help="Run a failing job up to this many times."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress view."),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="[slurm/ngc] After submitting, show the run's progress until it is done (as `jq status RUN --watch`).",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Run in the background, in a session of its own, so that closing the terminal or logging out does not "
        "stop the sweep; output goes to TRAIN_DIR/RUN/jq_launch.log. Returns at once.",
    ),
    slurm_gpus_per_job: int | None = typer.Option(
        None, "--slurm-gpus-per-job", help="[slurm] GPUs per Slurm job (--gres=gpu:G). Default 1."
    ),
    slurm_cpus_per_gpu: int | None = typer.Option(
        None, "--slurm-cpus-per-gpu", help="[slurm] CPUs per GPU (-c G*C; -c C when G is 0). Default 14."
    ),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition", help="[slurm] Partition (-p)."),
    slurm_timeout: str | None = typer.Option(
        None,
        "--slurm-timeout",
        help="[slurm] Sample Factory's: $TIMEOUT in the sbatch template, timeout(1)'s duration (e.g. 10, 1h); default 0 = none.",
    ),
    slurm_time_limit: str | None = typer.Option(
        None,
        "--slurm-time-limit",
        help="[slurm] sbatch --time, in Slurm's format (e.g. 2-00:00:00, 90, 1:30:00). Default: the partition's.",
    ),
    slurm_workdir: str | None = typer.Option(
        None, "--slurm-workdir", help="[slurm] Where sbatch scripts and Slurm logs go. Default ./slurm."
    ),
    slurm_sbatch_template: str | None = typer.Option(
        None, "--slurm-sbatch-template", help="[slurm] Your sbatch script template ($CMD, $GPU, $CPU, ...)."
    ),
    slurm_print_only: bool = typer.Option(
        False, "--slurm-print-only", help="[slurm] Print the scripts and sbatch commands; submit nothing."
    ),
    slurm_workers: int | None = typer.Option(
        None, "--slurm-workers", min=1, help="[slurm] Array tasks (workers). Default: one per queued job."
    ),
    slurm_max_running: int | None = typer.Option(
        None, "--slurm-max-running", min=1, help="[slurm] At most this many workers at once (the array's %throttle)."
    ),
    slurm_mode: str | None = typer.Option(
        None,
        "--slurm-mode",
        help="[slurm] workers (one array draining the queue) or per-job (one sbatch per experiment).",
    ),
    slurm_signal_lead: int | None = typer.Option(
        None,
        "--slurm-signal-lead",
        help="[slurm] Seconds of warning (USR1) before a time limit or preemption. Default 60.",
    ),
    slots: int | None = typer.Option(None, "--slots", min=1, help="[slurm/ngc] Jobs at once per worker. Default 1."),
    grace: float | None = typer.Option(
        None, "--grace", min=0, help="Seconds jobs get after TERM before KILL when a worker stops. Default 30."
    ),
    metrics_every: float | None = typer.Option(
        None,
        "--metrics-every",
        min=0,
        help="Seconds between reads of a running job's metrics into the DB. Default 30; 0: only when it ends.",
    ),
    lease: float | None = typer.Option(
        None,
        "--lease",
        min=0.1,
        help="Seconds a silent worker keeps its jobs before they are requeued; a DB outage up to about this minus "
        "--grace and a heartbeat loses nothing (docs/reliability.md). Default 60.",
    ),
    ngc_job_template: str | None = typer.Option(
        None,
        "--ngc-job-template",
        help="[ngc] File with an `ngc batch run ...` command line using {{ name }} and {{ experiment_cmd }}.",
    ),
    ngc_print_only: bool = typer.Option(
        False, "--ngc-print-only", help="[ngc] Print the ngc commands; submit nothing."
    ),
    ngc_workers: int | None = typer.Option(
        None, "--ngc-workers", min=1, help="[ngc] Run W NGC jobs that each run a worker (needs a PostgreSQL --db)."
    ),
    db: str | None = DbOption,
) -> None:
    """Enqueue a sweep (idempotently) and run it to the end, with a live progress view.

    Accepts Sample Factory's spellings too: replace `python -m sample_factory.launcher.run` by `jq launch`
    (--run=mod --backend=processes --max_parallel=8 --num_gpus=4 --experiments_per_gpu=2 ...).
    Exits non-zero if any job failed. Ctrl-C hands running jobs back to the queue; `jq resume` carries on.
    """
    from jobqueue import launch as launching, service
    from jobqueue.settings import FLAGS, parse

    target = sweep or run_module
    if not target:
        raise UserError("name the sweep: `jq launch experiments.quickstart` (or --run=experiments.quickstart)")
    flags = _given(
        backend=backend,
        num_gpus=num_gpus,
        gpus=gpus,
        experiments_per_gpu=experiments_per_gpu,
        max_parallel=max_parallel,
        pause_between=pause_between,
        timeout=timeout,
        max_attempts=max_attempts,
        slurm_gpus_per_job=slurm_gpus_per_job,
        slurm_cpus_per_gpu=slurm_cpus_per_gpu,
        slurm_partition=slurm_partition,
        slurm_timeout=slurm_timeout,
        slurm_time_limit=slurm_time_limit,
        slurm_workdir=slurm_workdir,
        slurm_sbatch_template=slurm_sbatch_template,
        slurm_workers=slurm_workers,
        slurm_max_running=slurm_max_running,
        slurm_mode=slurm_mode,
        slurm_signal_lead=slurm_signal_lead,
        slots=slots,
        grace=grace,
        metrics_every=metrics_every,
        lease=lease,
        ngc_job_template=ngc_job_template,
        ngc_workers=ngc_workers,
        slurm_print_only=slurm_print_only,
        ngc_print_only=ngc_print_only,
    )
    parse(flags, FLAGS)  # bad flags fail before the sweep file runs
    plan = service.plan_sweep(target, train_dir=train_dir, suffix=experiment_suffix)
    if detach:
        raise typer.Exit(launching.detach(plan, [a for a in sys.argv[1:] if a != "--detach"]))
    raise typer.Exit(launching.launch(db, plan, flags, progress=not no_progress, watch=watch))


@command()
def resume(
    run: str | None = typer.Argument(
        None, help="Only this run (default: every run with queued jobs).", autocompletion=completion.run_names
    ),
    failed: bool = typer.Option(False, "--failed", help="Also queue failed and timed-out jobs again."),
    requeue_only: bool = typer.Option(False, "--requeue-only", help="Requeue and clean up, but start no workers."),
    backend: str | None = typer.Option(None, "--backend", help="Override the backend recorded by jq launch."),
    max_parallel: int | None = typer.Option(
        None, "--max-parallel", min=1, help="Override the recorded --max-parallel."
    ),
    experiments_per_gpu: int | None = typer.Option(None, "--experiments-per-gpu"),
    num_gpus: int | None = typer.Option(None, "--num-gpus"),
    lease: float | None = typer.Option(
        None,
        "--lease",
        min=0.1,
        help="Workers silent this long count as lost; the workers it starts use it too. Default: the run's "
        "recorded --lease, else 60.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress view."),
    slurm_workers: int | None = typer.Option(
        None, "--slurm-workers", min=1, help="[slurm] Array tasks for the new submission."
    ),
    slurm_max_running: int | None = typer.Option(None, "--slurm-max-running", min=1),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition"),
    slurm_timeout: str | None = typer.Option(None, "--slurm-timeout"),
    slurm_time_limit: str | None = typer.Option(None, "--slurm-time-limit"),
    slurm_print_only: bool = typer.Option(False, "--slurm-print-only", help="[slurm] Print what would be submitted."),
    db: str | None = DbOption,
) -> None:
    """After a crash, reboot or Ctrl-C: requeue lost jobs, kill orphans, and run the rest with the recorded settings."""
    from jobqueue import launch as launching
    from jobqueue.settings import FLAGS, parse

    flags = _given(
        backend=backend,
        max_parallel=max_parallel,
        experiments_per_gpu=experiments_per_gpu,
        num_gpus=num_gpus,
        slurm_workers=slurm_workers,
        slurm_max_running=slurm_max_running,
        slurm_partition=slurm_partition,
        slurm_timeout=slurm_timeout,
        slurm_time_limit=slurm_time_limit,
        slurm_print_only=slurm_print_only,
        lease=lease,
    )
    parse(flags, FLAGS)
    code = launching.resume(
        _open(db, create=False),
        run,
        failed=failed,
        requeue_only=requeue_only,
        flags=flags,
        progress=not no_progress,
    )
    raise typer.Exit(code)


@command()
def cancel(
    targets: list[str] | None = typer.Argument(
        None, help="A run name, or job ids.", autocompletion=completion.runs_or_job_ids
    ),
    db: str | None = DbOption,
) -> None:
    """Cancel a run's (or some jobs') queued and running jobs; running ones are terminated and recorded as cancelled."""
    from jobqueue import control

    print(control.cancel(_open(db, create=False), targets or []))


@command()
def retry(
    targets: list[str] | None = typer.Argument(
        None, help="A run name, or job ids (default: every run).", autocompletion=completion.runs_or_job_ids
    ),
    failed: bool = typer.Option(False, "--failed", help="Only failed jobs (not timed-out or cancelled ones)."),
    db: str | None = DbOption,
) -> None:
    """Put failed, timed-out and cancelled jobs back in the queue (then run `jq worker` or `jq resume`)."""
    from jobqueue import control

    n = control.retry(_open(db, create=False), targets or [], failed_only=failed)
    print(f"{n} jobs queued again")


@db_app.command("copy")
def db_copy(
    src: str = typer.Argument(..., help="The queue to copy: a file path or URL."),
    dst: str = typer.Argument(..., help="A new, empty DB: a file path or postgresql+psycopg://... URL."),
) -> None:
    """Copy a queue with its history (runs, jobs, attempts, workers, submissions, metrics), e.g. from SQLite to PostgreSQL."""
    from jobqueue.copy import copy_queue

    copied = copy_queue(_open(src, create=False), _open(dst))
    print("copied " + ", ".join(f"{n} {table}" for table, n in copied.items()))


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
    sys.excepthook = _scrubbed_traceback
    try:
        _main()
    finally:
        # Close the DB connections ourselves (SQLite then checkpoints and removes its WAL), and exempt
        # everything else from the collections Python runs at exit: tearing down SQLAlchemy's and rich's
        # object graphs would otherwise delay the end of every command (docs/performance.md).
        import gc

        if "jobqueue.db" in sys.modules:
            sys.modules["jobqueue.db"].close_all()
        gc.freeze()


def _scrubbed_traceback(kind, value, tb) -> None:
    """A bug's traceback, with any DB password this process knows shown as ***."""
    import traceback

    from jobqueue.paths import scrub

    sys.stderr.write(scrub("".join(traceback.format_exception(kind, value, tb))))


def _app_for(argv: list[str]) -> typer.Typer:
    """An app of only the command named first: typer builds every registered command's parameters on each call,
    which would delay `jq launch` before it can start a job, and the command parses the same alone. `jq --help`,
    `jq db ...`, shell completion of a command's name and typos get the whole app."""
    entry = _COMMANDS.get(argv[0]) if argv else None
    if entry is None:
        return app
    fn, options = entry
    single = _new_app()
    single.callback()(_no_options)  # a group, so that the command is still named on the command line
    single.command(**options)(fn)
    return single


def _no_options() -> None:
    pass


def _command_being_completed(prog_name: str) -> list[str]:
    """During shell completion, whose words come in the environment (typer's protocol), the command typed in full
    before the word being completed, if any: TAB after `jq logs ` then builds `logs` alone."""
    if f"_{prog_name.replace('-', '_').upper()}_COMPLETE" not in os.environ:
        return []
    if "COMP_WORDS" in os.environ:  # bash
        typed = os.environ["COMP_WORDS"].split()[: int(os.environ.get("COMP_CWORD", "0"))]
    else:  # zsh and fish
        line = os.environ.get("_TYPER_COMPLETE_ARGS", "")
        typed = line.split() if line.endswith(" ") else line.split()[:-1]
    return typed[1:2]


def _main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("launch", "resume"):
        argv = argv[:1] + normalize_sf_argv(argv[1:])
    prog_name = Path(sys.argv[0]).name if sys.argv[0] not in ("-m", "-c") else "jq"
    try:
        _app_for(argv or _command_being_completed(prog_name))(args=argv, prog_name=prog_name)
    except UserError as exc:
        _stderr(f"jq: error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        _stderr("jq: interrupted")
        sys.exit(130)
    except Exception as exc:
        # A damaged DB file shows only when a damaged page is read: still the user's to fix, not a bug.
        text = str(getattr(exc, "orig", exc))
        if "malformed" in text or "file is not a database" in text:
            _stderr(f"jq: error: the DB file is damaged ({text}); restore it from a backup or use a new --db")
            sys.exit(2)
        if any(sign in text for sign in ("disk is full", "No space left", "File too large", "disk I/O error")):
            _stderr(
                f"jq: error: the disk is full or failing ({text}); nothing was written: free some space and run it again"
            )
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
