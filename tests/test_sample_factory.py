"""Sample Factory itself through jq: SF's CartPole training, 2 seeds x 2 learning rates (experiments/sf_cartpole.py),
launched with SF's own command line from the venv tests/setup.sh makes for it (.venv-sf), SIGKILLed mid-run twice
and resumed from SF's own checkpoints.

One sweep tells the whole story, to train only once: the launch is SIGKILLed while jobs 1 and 2 train (its guard
takes them down); `jq resume` finishes them from their checkpoints and is itself SIGKILLed, together with its
guard, while jobs 3 and 4 train (they run on as orphans); a second `jq resume` kills the orphans and finishes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from jobqueue.metrics import find_event_files, read_event_file
from tests.conftest import REPO, Project, service_unavailable

pytestmark = pytest.mark.sample_factory

SF_PYTHON = REPO / ".venv-sf" / "bin" / "python"
RUN = "sf_cartpole"
# Sample Factory's launch command word for word, `python -m sample_factory.launcher.run` becoming `python -m jobqueue launch`.
SF_LAUNCH = [
    "launch",
    f"--run=experiments.{RUN}",
    "--backend=processes",
    "--max_parallel=2",
    "--experiments_per_gpu=-1",
    "--num_gpus=1",
    "--train_dir=./train_dir",
]
# The names Sample Factory's own launcher gives the sweep's experiments.
NAMES = [
    "00_cartpole_see_1_l.rat_0.0001",
    "01_cartpole_see_1_l.rat_0.0003",
    "02_cartpole_see_2_l.rat_0.0001",
    "03_cartpole_see_2_l.rat_0.0003",
]
TRAINING_STEPS = 4096  # --train_for_env_steps in the sweep file
SLOW = 300  # seconds: SF on 2 busy cores starts in 10-30 s and trains at 100-500 env steps a second


def sf_jq(project: Project, *args: str) -> subprocess.Popen:
    """`jq` run by the SF venv's Python, which a worker gives every job whose command starts with `python`.

    Its output goes to a file: nobody reads a pipe while SF trains."""
    with open(project.path / "jq-output.txt", "a") as out:
        return subprocess.Popen(
            [str(SF_PYTHON), "-m", "jobqueue", *args],
            cwd=project.path,
            env=project.env(PYTHONPATH=REPO),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def experiment_dir(project: Project, job: dict) -> Path:
    flags = dict(arg.split("=", 1) for arg in job["argv"] if arg.startswith("--") and "=" in arg)
    return project.path / flags["--train_dir"] / flags["--experiment"]


def checkpoint_steps(directory: Path) -> list[int]:
    """The env steps of SF's checkpoints of one training (it names them checkpoint_{train_step}_{env_steps}.pth)."""
    return sorted(int(p.stem.rsplit("_", 1)[1]) for p in (directory / "checkpoint_p0").glob("checkpoint_*_*.pth"))


def logged_reward(directory: Path) -> bool:
    """The training wrote its mean reward to its TensorBoard event file: its curve has begun."""
    return any(
        point.key == "reward/reward"
        for path in find_event_files(str(directory))
        for chunk in read_event_file(path)
        for point in chunk.points
    )


def checkpointed_and_not_saving(directories: list[Path]) -> bool:
    """Every training has a checkpoint past step 0, and none is writing one. SF restarts from the newest
    `checkpoint_*` file, a half-written `checkpoint_temp` included: a kill must not land while it exists."""
    return all(
        max(checkpoint_steps(d), default=0) > 0 and not (d / "checkpoint_p0" / "checkpoint_temp").exists()
        for d in directories
    )


def guard_of(pid: int) -> psutil.Process:
    """The guard a launch's worker starts (jobqueue/processes.py): its one child that is not a job."""
    (guard,) = [p for p in psutil.Process(pid).children() if "JQ_ATTEMPT_ID" not in p.environ()]
    return guard


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def job_processes(project: Project) -> dict[int, list[psutil.Process]]:
    """This project's live job processes, by attempt id. Matched on the DB's whole path: other test sessions on
    the machine run jobs of DBs named jobqueue.db too."""
    found: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("JQ_DB", "").endswith(project.db) and "JQ_ATTEMPT_ID" in env and alive(proc):
                found.setdefault(int(env["JQ_ATTEMPT_ID"]), []).append(proc)
        except psutil.Error:
            continue
    return found


def running_attempts(project: Project) -> set[int]:
    return {row["id"] for row in project.sql("select id from attempts where state = 'running'")}


@dataclass
class CrashedSweep:
    """What was seen along the story told in the module's docstring, for the tests to check."""

    project: Project
    jobs: list[dict]  # as `jq list --json` shows them at the end
    steps_at_launch_kill: dict[int, int]  # job id -> its newest checkpoint's env steps when the launch was SIGKILLed
    trainings_at_launch_kill: set[int]  # attempt ids with live processes, and the attempts the DB said were running
    running_at_launch_kill: set[int]
    survivors_of_launch: dict[int, list[psutil.Process]]  # job processes alive 10 s after the launch was SIGKILLed
    orphans: dict[int, list[psutil.Process]]  # attempt id -> processes alive after resume and guard were SIGKILLed
    running_at_double_kill: set[int]
    overlaps: set[int]  # attempts that started while an orphan still ran
    orphans_left: list[psutil.Process]  # orphans still alive a minute after the second resume started
    final_exit_code: int | None  # None: still running after 10 minutes
    output: str  # everything the launch and both resumes printed

    def attempt_states(self, job_id: int) -> list[str]:
        rows = self.project.sql(f"select state from attempts where job_id = {job_id} order by number")
        return [row["state"] for row in rows]


@pytest.fixture(scope="module")
def crashed_sweep(tmp_path_factory):
    if not SF_PYTHON.exists():
        service_unavailable("Sample Factory", f"{SF_PYTHON} is missing; tests/setup.sh makes it")
    path = tmp_path_factory.mktemp("sf")
    project = Project(path, str(path / "jobqueue.db"))
    started: list[subprocess.Popen] = []
    try:
        yield _train_crash_and_resume(project, started)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for procs in job_processes(project).values():
            for proc in procs:
                proc.kill()


def _train_crash_and_resume(project: Project, started: list[subprocess.Popen]) -> CrashedSweep:
    output = project.path / "jq-output.txt"
    diagnose = lambda: output.read_text()[-3000:] if output.exists() else "(no output)"  # noqa: E731

    launch = sf_jq(project, *SF_LAUNCH)
    started.append(launch)
    project.wait_for(
        lambda: output.exists() and "new jobs enqueued" in output.read_text(),
        what="the launch to enqueue",
        timeout=60,
        diagnose=diagnose,
    )
    jobs = project.jobs()
    dirs = {job["id"]: experiment_dir(project, job) for job in jobs}
    first, second = [dirs[job["id"]] for job in jobs[:2]], [dirs[job["id"]] for job in jobs[2:]]

    # The launch is SIGKILLed while jobs 1 and 2 train; its guard kills them.
    project.wait_for(
        lambda: checkpointed_and_not_saving(first),
        timeout=SLOW,
        what="jobs 1 and 2 to save a checkpoint",
        diagnose=diagnose,
    )
    trainings_at_launch_kill = set(job_processes(project))
    project.wait_for(lambda: checkpointed_and_not_saving(first), what="jobs 1 and 2 to finish saving")
    launch.kill()
    steps_at_launch_kill = {job["id"]: checkpoint_steps(dirs[job["id"]])[-1] for job in jobs[:2]}
    launch.wait()
    running_at_launch_kill = running_attempts(project)
    deadline = time.monotonic() + 10
    while job_processes(project) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors_of_launch = job_processes(project)

    # `jq resume` finishes jobs 1 and 2 and is SIGKILLed with its guard while jobs 3 and 4 train.
    resume = sf_jq(project, "resume", RUN)
    started.append(resume)
    project.wait_for(
        lambda: checkpointed_and_not_saving(second) and all(map(logged_reward, second)),
        timeout=2 * SLOW,
        what="jobs 3 and 4 to save a checkpoint and write a reward to TensorBoard",
        diagnose=diagnose,
    )
    guard = guard_of(resume.pid)
    guard.kill()
    project.wait_for(lambda: not alive(guard), what="the guard to die")
    resume.kill()
    resume.wait()
    running_at_double_kill = running_attempts(project)
    orphans = job_processes(project)

    # A second `jq resume` must kill the orphans before it starts their jobs again.
    final = sf_jq(project, "resume", RUN)
    started.append(final)
    orphan_processes = [proc for procs in orphans.values() for proc in procs]
    overlaps: set[int] = set()
    deadline = time.monotonic() + 60
    while any(alive(proc) for proc in orphan_processes) and time.monotonic() < deadline:
        overlaps |= job_processes(project).keys() - orphans.keys()
        time.sleep(0.1)
    orphans_left = [proc for proc in orphan_processes if alive(proc)]
    try:
        final_exit_code: int | None = final.wait(timeout=2 * SLOW)
    except subprocess.TimeoutExpired:
        final_exit_code = None  # for the tests to say which claim broke; the fixture's clean-up stops it

    return CrashedSweep(
        project=project,
        jobs=project.jobs(),
        steps_at_launch_kill=steps_at_launch_kill,
        trainings_at_launch_kill=trainings_at_launch_kill,
        running_at_launch_kill=running_at_launch_kill,
        survivors_of_launch=survivors_of_launch,
        orphans=orphans,
        running_at_double_kill=running_at_double_kill,
        overlaps=overlaps,
        orphans_left=orphans_left,
        final_exit_code=final_exit_code,
        output=output.read_text(),
    )


def test_the_sweep_trains_all_four_experiments_to_the_end_and_sf_writes_its_own_files(crashed_sweep):
    s = crashed_sweep
    assert s.final_exit_code == 0, s.output[-3000:]
    assert [(job["name"], job["state"]) for job in s.jobs] == [(name, "succeeded") for name in NAMES]
    for job in s.jobs:
        directory = experiment_dir(s.project, job)
        config = json.loads((directory / "config.json").read_text())
        assert (config["seed"], config["learning_rate"]) == (job["params"]["seed"], job["params"]["learning_rate"])
        assert list((directory / ".summary" / "0").glob("events.out.tfevents.*")), directory
        assert checkpoint_steps(directory)[-1] >= TRAINING_STEPS


def test_a_sigkilled_launch_takes_sf_down_with_it_and_resume_carries_on_from_sfs_checkpoints(crashed_sweep):
    s = crashed_sweep
    assert s.trainings_at_launch_kill == s.running_at_launch_kill and len(s.running_at_launch_kill) == 2
    assert s.survivors_of_launch == {}  # the launch's guard killed SF's runner, learner and workers
    for job_id, steps in s.steps_at_launch_kill.items():
        assert s.attempt_states(job_id) == ["lost", "succeeded"]
        log = s.project.jq("logs", str(job_id), "--attempt", "2", check=True).stdout
        assert "Loading state from checkpoint" in log, log[-3000:]
        loaded = re.search(r"Loaded experiment state at .*env_steps=(\d+)", log)
        assert loaded and int(loaded[1]) >= steps > 0, log[-3000:]


def test_when_jq_and_its_guard_are_both_sigkilled_the_next_resume_kills_the_orphans_and_each_job_succeeds_once(
    crashed_sweep,
):
    s = crashed_sweep
    # With no guard left, SF trains on, unobserved, until `jq resume` finds it by its JQ_ATTEMPT_ID.
    assert set(s.orphans) == s.running_at_double_kill and len(s.running_at_double_kill) == 2
    assert s.overlaps == set()  # no new attempt started while an orphan still ran
    killed = re.findall(r"(\d+) orphaned job processes killed", s.output)[-1]
    assert int(killed) > 0, s.output[-3000:]  # killed, not over by themselves before the resume came
    assert s.orphans_left == []
    assert job_processes(s.project) == {}
    for job in s.jobs[2:]:
        assert s.attempt_states(job["id"]) == ["lost", "succeeded"]
    succeeded = s.project.sql("select job_id, count(*) as n from attempts where state = 'succeeded' group by job_id")
    assert sorted((row["job_id"], row["n"]) for row in succeeded) == [(job["id"], 1) for job in s.jobs]


def test_jq_results_shows_sfs_reward_for_every_job_and_a_resumed_jobs_curve_holds_both_attempts(crashed_sweep):
    """The worker read SF's own TensorBoard event files (one per attempt) into the DB; SF needed no change."""
    s = crashed_sweep
    rows = json.loads(s.project.jq("results", RUN, "--metric", "reward/reward", "--json", check=True).stdout)
    assert sorted(row["name"] for row in rows) == sorted(NAMES)
    for row in rows:
        reward = row["metrics"]["reward/reward"]
        assert reward["count"] > 0 and reward["last_step"] > 0, row
    curves = {}
    for job in s.jobs:  # every job was SIGKILLed once, mid-run, and resumed from its checkpoint
        points = json.loads(s.project.jq("metrics", str(job["id"]), "reward/reward", "--json", check=True).stdout)
        curves[job["id"]] = {point["attempt"] for point in points}
    assert all(2 in attempts for attempts in curves.values()), curves
    # SF's TensorBoard writer holds its events --flush_summaries_interval seconds (2 here) before it writes them, so
    # a first attempt killed early (jobs 1 and 2, with the launch) may have left none. The orphaned first attempts of
    # jobs 3 and 4 trained on until the next resume killed them: their curves hold both attempts, though no worker
    # of theirs read their files before the next attempt's did (an event file is the attempt's that opened it).
    assert {3, 4} <= {job_id for job_id, attempts in curves.items() if attempts == {1, 2}}, curves
