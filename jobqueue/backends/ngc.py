"""NGC backend: submit NVIDIA NGC batch jobs from an `ngc batch run ...` template.

Unlike Sample Factory's, the template is split into words with shlex first and the placeholders are
replaced inside each word, and the words run without a shell: no value (quotes, `$`, `;`) can break
out locally. `{{ experiment_cmd }}` is the job's command, shell-quoted for the shell NGC runs it in.
Job ids are parsed from `--format_type json` and stored with each submission.

NGC jobs run in NVIDIA's cloud and inherit nothing from here, so a DB URL's password cannot travel in the
environment: the commands carry the URL without it (a command line is seen by NGC, its logs and our DB), and
the job's container must supply it through libpq's own PGPASSFILE, ~/.pgpass or PGSERVICE.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from jobqueue import queue
from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.paths import has_password, redacted, resolve_url, without_password
from jobqueue.settings import LaunchSettings
from jobqueue.states import JobState

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
KNOWN = {"name", "experiment_cmd", "job_id", "run", "db"}
SUBMIT_TIMEOUT = 120  # the real CLI waits 30 s per request on a silent host
PAGE = 1000  # jobs or submissions read from the DB at a time
KILL_CHUNK = 100  # NGC job ids in one `ngc batch kill`, whose command line would otherwise grow with the run
SHOWN = 100  # NGC ids a message lists before it says how many more there are
FAILED_KILLS_SHOWN = 3  # a cancel's messages show the first few failed kills, then how many failed
# Submissions no longer under way: nothing to ask NGC about, nothing to kill.
_LIVE = "external_id IS NOT NULL AND state NOT IN ('failed', 'cancelled')"


def load_template(path: str | None) -> list[str]:
    """The template's words. Comment lines and backslash-newline continuations are allowed."""
    if not path:
        raise UserError(
            "--backend ngc needs --ngc-job-template FILE: an `ngc batch run ...` line with {{ name }} and {{ experiment_cmd }} "
            "(example: workers/ngc_job.template)"
        )
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--ngc-job-template {path}: no such file")
    text = "\n".join(line for line in file.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = text.replace("\\\n", " ")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"{path}: cannot split the template into words ({exc}); check its quotes") from None
    found = {m.group(1) for w in words for m in PLACEHOLDER.finditer(w)}
    if "experiment_cmd" not in found:
        raise UserError(
            f'{path}: the template has no {{{{ experiment_cmd }}}}; put it in --commandline "{{{{ experiment_cmd }}}}"'
        )
    unknown = found - KNOWN
    if unknown:
        raise UserError(
            f"{path}: unknown placeholder {{{{ {sorted(unknown)[0]} }}}}; use one of {', '.join(sorted(KNOWN))}"
        )
    if words[:3] != ["ngc", "batch", "run"]:
        raise UserError(f"{path}: the template must start with `ngc batch run`")
    return words


def fill(words: list[str], values: dict[str, str]) -> list[str]:
    argv = [PLACEHOLDER.sub(lambda m: values[m.group(1)], w) for w in words]
    if not any(w == "--format_type" or w.startswith("--format_type=") for w in argv):
        argv += ["--format_type", "json"]  # so the job id can be read back
    return argv


def is_shared_db(url: str) -> bool:
    return url.startswith("postgresql")


def check_settings(db_url: str | None, settings: LaunchSettings) -> None:
    load_template(settings.ngc.job_template)
    url = resolve_url(db_url)
    if settings.ngc.workers and not is_shared_db(url):
        raise UserError(
            f"--ngc-workers needs a DB that NGC jobs can reach: {redacted(url)} is an SQLite file on this machine. "
            "Use --db postgresql+psycopg://user@host/db (or per-job mode, without --ngc-workers)"
        )
    if not settings.ngc.print_only and shutil.which("ngc") is None:
        raise UserError("ngc is not on PATH: install NVIDIA's NGC CLI, or use --ngc-print-only to see the commands")


def _worker_cmd(url: str, settings: LaunchSettings, extra: list[str]) -> str:
    lease = [] if settings.lease is None else ["--lease", f"{settings.lease:g}"]
    return shlex.join(
        ["python", "-m", "jobqueue", "worker", "--db", without_password(url), "--backend", "ngc", *lease, *extra]
    )


def plan_commands(
    db_url: str, run: dict, settings: LaunchSettings, queued: Iterable[dict]
) -> Iterator[tuple[int | None, list[str]]]:
    """(job id or None for a worker, argv) for each NGC job to submit, as `queued` (id, name, cmd) is read."""
    words = load_template(settings.ngc.job_template)
    shared = is_shared_db(db_url)
    base = {"run": run["name"], "db": without_password(db_url)}
    if settings.ngc.workers:
        cmd = _worker_cmd(db_url, settings, ["--run", run["name"], "--slots", str(settings.slots)])
        for i in range(settings.ngc.workers):
            name = f"jq-{run['name']}-worker-{i}"
            yield None, fill(words, {**base, "name": name, "job_id": "", "experiment_cmd": cmd})
        return
    for job in queued:
        cmd = _worker_cmd(db_url, settings, ["--job", str(job["id"])]) if shared else job["cmd"]
        yield job["id"], fill(words, {**base, "name": job["name"], "job_id": str(job["id"]), "experiment_cmd": cmd})


def parse_job_id(stdout: str) -> str | None:
    try:
        data = json.loads(stdout)
        return str(data["job"]["id"])
    except (ValueError, KeyError, TypeError):
        match = re.search(r"^\s*Id:\s*(\d+)", stdout, re.MULTILINE)  # the text table, without --format_type json
        return match.group(1) if match else None


def submit(argv: list[str]) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)
        return proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        return -1, "", f"ngc did not answer within {SUBMIT_TIMEOUT}s"
    except OSError as exc:
        return -1, "", f"cannot run ngc: {exc.strerror}"


def launch(db: Database, run: dict, settings: LaunchSettings) -> int:
    shared = is_shared_db(db.url)
    queued: Iterable[dict] = ()
    total = settings.ngc.workers
    if not settings.ngc.workers:
        total = queue.count_unsubmitted_jobs(db, run["id"], JobState.QUEUED.value, "ngc")
        if not total:
            print(f"{run['name']}: every queued job was already submitted to NGC; nothing to do")
            return 0
        queued = queue.unsubmitted_jobs(db, run["id"], JobState.QUEUED.value, "ngc", "id, name, cmd", page=PAGE)
    commands = plan_commands(db.url, run, settings, queued)
    if shared and has_password(db.url):
        print(
            "jq: warning: the NGC jobs get the DB URL without its password; their container must supply it in a "
            "PGPASSFILE, ~/.pgpass or PGSERVICE (docs/ngc.md)",
            file=sys.stderr,
        )
    if settings.ngc.print_only:
        for _, argv in commands:
            print(shlex.join(argv))
        return 0
    if not shared and not settings.ngc.workers:
        queue.update_run_settings(db, run["id"], {"executes": "direct"})
        print(
            f"{run['name']}: {redacted(db.url)} is not reachable from NGC, so each NGC job runs its command directly "
            "and this DB records submissions, not execution"
        )
    mode = "workers" if settings.ngc.workers else "per-job"
    done = failures = 0
    # --max-parallel bounds the `ngc batch run` calls under way at once, as it bounds jobs at once locally.
    with ThreadPoolExecutor(max_workers=settings.max_parallel) as pool:
        for done, ((job_id, argv), (code, out, err)) in enumerate(
            _answers(pool, commands, window=2 * settings.max_parallel), start=1
        ):
            ngc_id = parse_job_id(out) if code == 0 else None
            state = "submitted" if code == 0 and ngc_id else ("unconfirmed" if code == 0 else "failed")
            queue.record_submission(
                db,
                run_id=run["id"],
                backend="ngc",
                mode=mode,
                job_id=job_id,
                external_id=ngc_id,
                tasks=1 if job_id is None else None,
                state=state,
                command=argv,
                stdout=out,
                stderr=err,
                exit_code=code,
            )
            what = f"job {job_id}" if job_id is not None else "a worker"
            if state == "failed":
                failures += 1
                message = _error_text(err or out)
                print(
                    f"[{done}/{total}] NGC submission of {what} failed (exit {code}): {message}",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(
                    f"[{done}/{total}] submitted {what} as NGC job {ngc_id or '(id not found in the answer)'}",
                    flush=True,
                )
    print(
        f"{run['name']}: {done - failures} of {done} NGC jobs submitted; `jq status {run['name']} --refresh` shows their state"
    )
    return 1 if failures else 0


def _answers(
    pool: ThreadPoolExecutor, commands: Iterable[tuple[int | None, list[str]]], window: int
) -> Iterator[tuple[tuple[int | None, list[str]], tuple[int, str, str]]]:
    """Each command with ngc's answer to it, in the commands' order. The pool is handed `window` commands ahead of
    the answer awaited, enough to keep it busy, not a whole run's."""
    pending: deque = deque()
    for command in commands:
        pending.append((command, pool.submit(submit, command[1])))
        if len(pending) >= window:
            command, answer = pending.popleft()
            yield command, answer.result()
    for command, answer in pending:
        yield command, answer.result()


def _error_text(text: str) -> str:
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip().splitlines()[-1] if text.strip() else "no output"


def refresh_states(db: Database, run: str | None) -> None:
    runs = [queue.get_run(db, run)] if run else [queue.get_run(db, name) for name in queue.run_names(db).values()]
    for r in runs:
        unfinished = f"{_LIVE} AND state <> 'FINISHED_SUCCESS'"
        for sub in queue.submissions_of_run(db, r["id"], "ngc", unfinished, "id, external_id", page=PAGE):
            code, out, err = submit(["ngc", "batch", "info", sub["external_id"], "--format_type", "json"])
            if code == 0:
                try:
                    data = json.loads(out)
                    state = (data.get("job") or data).get("jobStatus", {}).get("status")
                except (ValueError, AttributeError):
                    state = None
                if state:
                    queue.update_submission(db, sub["id"], state=state)


def cancel_run(db: Database, run: dict) -> list[str]:
    """`ngc batch kill` the run's NGC jobs under way, KILL_CHUNK at a time; a message for the calls made."""
    live = queue.submissions_of_run(db, run["id"], "ngc", _LIVE, "id, external_id", page=PAGE)
    if shutil.which("ngc") is None:
        return _kill_by_hand(run, live)
    calls = failures = killed = 0
    command, failed = "", []
    while chunk := list(islice(live, KILL_CHUNK)):
        argv = ["ngc", "batch", "kill", ",".join(s["external_id"] for s in chunk)]
        command, calls = " ".join(argv), calls + 1
        code, out, err = submit(argv)
        if code != 0:
            failures += 1
            if failures <= FAILED_KILLS_SHOWN:
                failed.append(f"{command} failed: {_error_text(err or out)}")
            continue
        queue.set_submissions_state(db, [s["id"] for s in chunk], "cancelled")
        killed += len(chunk)
    if calls <= 1:
        return failed or ([command] if command else [])
    lines = [f"ngc batch kill: {killed} NGC jobs in {calls - failures} calls of up to {KILL_CHUNK}"] if killed else []
    if failures:
        lines += failed
        lines.append(f"{failures} of {calls} `ngc batch kill` calls failed; `jq cancel {run['name']}` tries again")
    return lines


def _kill_by_hand(run: dict, live: Iterator[dict]) -> list[str]:
    """The message for a cancel without `ngc`: the first SHOWN NGC ids, and how to list the rest."""
    ids = [s["external_id"] for s in islice(live, SHOWN)]
    if not ids:
        return []
    message = f"ngc is not on PATH: kill NGC jobs {','.join(ids)} by hand"
    more = sum(1 for _ in live)
    if more:
        listing = f"SELECT external_id FROM submissions WHERE run_id = {run['id']} AND backend = 'ngc' AND {_LIVE}"
        message += f', and {more} more: `jq sql "{listing}"` lists them all'
    return [message]


class NgcBackend:
    name = "ngc"
    reports_nothing_queued = True

    def check(self, db_url: str, settings: LaunchSettings) -> None:
        check_settings(db_url, settings)

    def start(self, db: Database, run: dict, settings: LaunchSettings, progress: bool) -> int:
        return launch(db, run, settings)

    def live_states(self, submissions: list[dict]) -> dict[int, str]:
        return {}  # NGC's states are asked for by `jq status --refresh` and stored with each submission

    def cancel(self, db: Database, run: dict) -> list[str]:
        return cancel_run(db, run)


BACKEND = NgcBackend()
