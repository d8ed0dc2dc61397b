"""Slurm backend: one `sbatch --array` of workers that drain the run's queue (or, as in Sample Factory,
one sbatch per experiment, each a worker bound to its one job).

The sbatch script comes from a template with Sample Factory's variables ($CMD, $FILENAME, $PARTITION,
$GPU, $CPU, $TIMEOUT) plus $JQ_DB and $JQ_RUN; values are shell-quoted and other $NAMES are left to
the shell. Workers get `--signal=B:USR1@LEAD --requeue`: on the warning they hand their jobs back.

A DB URL with a password is written into no script and onto no command line: sbatch runs with it in $JQ_DB,
passes it on to the job with the rest of its environment (Slurm's default, --export=ALL), and the worker,
given no --db, reads it from there.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from string import Template

from jobqueue import queue
from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.paths import data_path, has_password, redacted
from jobqueue.settings import LaunchSettings
from jobqueue.states import JobState

DEFAULT_TEMPLATE = "workers/sbatch_worker.sh"
DEFAULT_MAX_ARRAY_SIZE = 1001
# Below Slurm's default KillWait (30 s): the worker must hand its jobs back before Slurm KILLs it.
DEFAULT_GRACE = 10.0


# What Slurm sets in an array task only. sbatch exports the environment it is run in, so a job submitted from inside
# an array task (Sample Factory's timeout template resubmits itself) would carry its array's values, which Slurm sets
# afresh only in a new array's tasks.
ARRAY_VARIABLES = (
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
)


def sbatch_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment to run sbatch in: this one, without the array variables of a job we may run inside of."""
    return {k: v for k, v in os.environ.items() if k not in ARRAY_VARIABLES} | extra


def check_settings(settings: LaunchSettings) -> None:
    s = settings.slurm
    if s.sbatch_template and not Path(s.sbatch_template).is_file():
        raise UserError(f"--slurm-sbatch-template {s.sbatch_template}: no such file")
    if not s.print_only and not _which("sbatch"):
        raise UserError(
            "sbatch is not on PATH: run on a Slurm login node, or use --slurm-print-only to see the commands"
        )


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def load_template(path: str | None) -> str:
    return Path(path).read_text() if path else data_path(DEFAULT_TEMPLATE).read_text()


def fill_template(
    template: str,
    *,
    cmd: list[str],
    filename: str,
    partition: str | None,
    gpus: int,
    cpus: int,
    timeout: str,
    db_url: str,
    run: str,
) -> str:
    """Sample Factory's variables, shell-quoted; unknown $NAMES (like $HOME) stay for the shell. So does $JQ_DB
    when the URL holds a password: the shell reads it from the job's environment."""
    values = {
        # $PARTITION ends with a space, as Sample Factory's: its templates write `sbatch $PARTITION--gres=...`.
        "CMD": shlex.join(cmd),
        "FILENAME": shlex.quote(filename),
        "PARTITION": f"-p {shlex.quote(partition)} " if partition else "",
        "GPU": str(gpus),
        "CPU": str(cpus),
        "TIMEOUT": shlex.quote(str(timeout)),
        "JQ_RUN": shlex.quote(run),
    }
    if not has_password(db_url):
        values["JQ_DB"] = shlex.quote(db_url)
    return Template(template).safe_substitute(values)


def sbatch_argv(
    settings: LaunchSettings, script: str, output: str, array: str | None = None, name: str | None = None
) -> list[str]:
    s = settings.slurm
    argv = ["sbatch"]
    if s.partition:
        argv += ["-p", s.partition]
    if s.gpus_per_job > 0:
        argv.append(f"--gres=gpu:{s.gpus_per_job}")
    argv += ["-c", str(s.cpus_per_task), "--parsable", "--output", output]
    if array:
        argv.append(f"--array={array}")
    if name:
        argv += ["--job-name", name]
    if s.time_limit:
        argv.append(f"--time={s.time_limit}")
    argv += [f"--signal=B:USR1@{s.signal_lead}", "--requeue", script]
    return argv


def worker_argv(db_url: str, run: str, settings: LaunchSettings, job_id: int | None = None) -> list[str]:
    grace = DEFAULT_GRACE if settings.grace is None else settings.grace
    db = [] if has_password(db_url) else ["--db", db_url]  # else it comes in $JQ_DB (see the module's docstring)
    argv = [sys.executable, "-m", "jobqueue", "worker", *db, "--backend", "slurm", "--grace", f"{grace:g}"]
    if settings.metrics_every is not None:
        argv += ["--metrics-every", f"{settings.metrics_every:g}"]
    if settings.lease is not None:
        argv += ["--lease", f"{settings.lease:g}"]
    if job_id is not None:
        return argv + ["--job", str(job_id)]
    return argv + ["--run", run, "--slots", str(settings.slots)]


def max_array_size() -> int:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.startswith("MaxArraySize"):
                return int(line.split("=")[1])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return DEFAULT_MAX_ARRAY_SIZE


@dataclass
class Submission:
    script_path: str
    script: str
    argv: list[str]
    tasks: int | None
    job_id: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # for sbatch, which passes it on to the job


def plan_submissions(
    db_url: str, run: str, settings: LaunchSettings, queued: int, jobs: Iterable[dict]
) -> Iterator[Submission]:
    """The sbatch submissions for `queued` jobs: arrays of workers, or in per-job mode one per job of `jobs` (each
    with its id and name), made as they are submitted: a run of a million jobs is never held whole."""
    s = settings.slurm
    fill = functools.partial(
        fill_template,
        load_template(s.sbatch_template),
        partition=s.partition,
        gpus=s.gpus_per_job,
        cpus=s.cpus_per_task,
        timeout=s.timeout,
        db_url=db_url,
        run=run,
    )
    env = {"JQ_DB": db_url} if has_password(db_url) else {}
    if s.mode == "per-job":
        for job in jobs:
            path = os.path.abspath(os.path.join(s.workdir, f"sbatch_{job['name']}.sh"))
            script = fill(cmd=worker_argv(db_url, run, settings, job["id"]), filename=path)
            output = f"{s.workdir}/{os.path.basename(path)}-slurm-%j.out"
            yield Submission(path, script, sbatch_argv(settings, path, output), None, job["id"], env=env)
        return
    workers = s.workers or queued
    limit = max_array_size() if not s.print_only else DEFAULT_MAX_ARRAY_SIZE
    for part, start in enumerate(range(0, workers, limit)):
        tasks = min(limit, workers - start)
        array = f"0-{tasks - 1}" + (f"%{s.max_running}" if s.max_running else "")
        path = os.path.abspath(os.path.join(s.workdir, f"jq_{run}_workers{'_' + str(part) if part else ''}.sh"))
        script = fill(cmd=worker_argv(db_url, run, settings), filename=path)
        output = f"{s.workdir}/jq_{run}-%A_%a.out"
        yield Submission(
            path, script, sbatch_argv(settings, path, output, array=array, name=f"jq-{run}"), tasks, env=env
        )


def launch(db: Database, run: dict, settings: LaunchSettings) -> int:
    """Submit the run's workers (or one sbatch per queued job). Returns 0 when every submission went in."""
    s = settings.slurm
    workdir = s.workdir
    counts = {state: n for _, state, n in queue.status_counts(db, run["name"])}
    queued = counts.get(JobState.QUEUED.value, 0)
    if not queued:
        print(f"{run['name']}: nothing queued; nothing submitted")
        return 0
    if s.mode == "workers" and _live_submissions(db, run):
        print(f"{run['name']}: its Slurm workers are still queued or running and will take the {queued} queued jobs")
        return 0
    jobs = queue.jobs_in_state(db, run["id"], JobState.QUEUED.value)
    plans = plan_submissions(db.url, run["name"], settings, queued, jobs)
    if s.print_only:
        print_plans(plans)
        return 0
    os.makedirs(workdir, exist_ok=True)
    failures, ids = 0, []
    for plan in plans:
        Path(plan.script_path).write_text(plan.script)
        proc = subprocess.run(plan.argv, capture_output=True, text=True, timeout=120, env=sbatch_environment(plan.env))
        slurm_id = proc.stdout.strip().split(";")[0] if proc.returncode == 0 else None
        queue.record_submission(
            db,
            run_id=run["id"],
            backend="slurm",
            mode=s.mode,
            job_id=plan.job_id,
            external_id=slurm_id,
            tasks=plan.tasks,
            state="submitted" if slurm_id else "failed",
            command=plan.argv,
            stdout=proc.stdout,
            stderr=proc.stderr,
            exit_code=proc.returncode,
        )
        if slurm_id:
            ids.append(slurm_id)
            what = f"an array of {plan.tasks} workers" if plan.tasks else f"job {plan.job_id}"
            print(f"submitted {what} as Slurm job {slurm_id}: {shlex.join(plan.argv)}")
        else:
            failures += 1
            print(f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip()}", file=sys.stderr)
        if settings.pause_between:
            time.sleep(settings.pause_between)
    if s.mode == "per-job" and ids:
        Path(workdir, "scancel.sh").write_text(f"scancel {' '.join(ids)}\n")
        print(f"cancel them all with: bash {workdir}/scancel.sh")
    print(f"monitor: jq status {run['name']}; logs: tail -f {workdir}/*.out")
    return 1 if failures else 0


def print_plans(plans: Iterable[Submission]) -> None:
    for plan in plans:
        print(f"# {plan.script_path}")
        print(plan.script.rstrip("\n"))
        for name, value in plan.env.items():
            print(
                f"# sbatch runs with {name}={redacted(value)} in its environment: export it to run this line yourself"
            )
        print(shlex.join(plan.argv))
        print()


def live_states(slurm_ids: list[str]) -> dict[str, list[str]]:
    """Slurm states of these jobs (arrays give one state per task) from squeue; missing ids have finished."""
    if not slurm_ids or not _which("squeue"):
        return {}
    proc = subprocess.run(
        ["squeue", "-h", "-j", ",".join(slurm_ids), "-o", "%F %T"], capture_output=True, text=True, timeout=60
    )
    states: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states.setdefault(parts[0], []).append(parts[1])
    return states


_SUBMITTED = "external_id IS NOT NULL AND state = 'submitted'"
IDS_PER_CALL = 500  # Slurm job ids on one scancel or squeue command line


def _submitted(db: Database, run: dict) -> Iterator[dict]:
    return queue.submissions_of_run(db, run["id"], "slurm", _SUBMITTED, "id, external_id")


def _live_submissions(db: Database, run: dict) -> bool:
    """Whether any of the run's Slurm submissions is still queued or running, by squeue, a page of ids at a time."""
    submitted = _submitted(db, run)
    while ids := [s["external_id"] for s in islice(submitted, IDS_PER_CALL)]:
        if live_states(ids):
            return True
    return False


def describe_states(ids: list[str]) -> dict[str, str]:
    """A readable state per Slurm job id ("2 running, 1 pending"), or that it has left squeue."""
    live = live_states(ids)
    described = {}
    for slurm_id in ids:
        states = live.get(slurm_id)
        if states:
            counts: dict[str, int] = {}
            for state in states:
                counts[state] = counts.get(state, 0) + 1
            described[slurm_id] = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        else:
            described[slurm_id] = "finished (no longer in squeue)"
    return described


def cancel_run(db: Database, run: dict) -> list[str]:
    """scancel the run's Slurm jobs, IDS_PER_CALL ids a call; a line for each call."""
    submitted = _submitted(db, run)
    lines = []
    while chunk := list(islice(submitted, IDS_PER_CALL)):
        ids = [s["external_id"] for s in chunk]
        if not _which("scancel"):
            more = sum(1 for _ in submitted)
            return [
                f"scancel is not on PATH: cancel Slurm jobs {' '.join(ids)}{f' and {more} more' if more else ''} by hand"
            ]
        proc = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        queue.set_submissions_state(db, [s["id"] for s in chunk], "cancelled")
        lines.append(f"scancel {' '.join(ids)}" + (f" failed: {proc.stderr.strip()}" if proc.returncode != 0 else ""))
    return lines


class SlurmBackend:
    name = "slurm"
    reports_nothing_queued = True

    def check(self, db_url: str, settings: LaunchSettings) -> None:
        check_settings(settings)

    def start(self, db: Database, run: dict, settings: LaunchSettings, progress: bool) -> int:
        return launch(db, run, settings)

    def live_states(self, submissions: list[dict]) -> dict[int, str]:
        live = [s for s in submissions if s["state"] == "submitted" and s["external_id"]]
        states = describe_states([s["external_id"] for s in live]) if live else {}
        return {s["id"]: states[s["external_id"]] for s in live if s["external_id"] in states}

    def cancel(self, db: Database, run: dict) -> list[str]:
        return cancel_run(db, run)


BACKEND = SlurmBackend()
