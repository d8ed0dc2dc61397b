"""Results through the real CLI: sweeps whose jobs log metrics (jobqueue.log_metrics, tensorboardX's
SummaryWriter) run by `jq launch` / `jq worker`, compared with `jq results`, read back with `jq metrics`."""

import json
import math
import signal
import statistics
import time

import pytest

from tests.conftest import REPO

# A training script: logs reward and loss each step, and resumes from its checkpoint as a real one does. Its
# last values follow from lr and seed; the job with lr 0.2 and seed 3 diverges (its last loss is NaN).
TRAIN = """
import argparse, os, time
from jobqueue import log_metrics

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--step_time", type=float, default=0.0)
p.add_argument("--until", help="log until this file exists (or --steps)")
p.add_argument("--bad_lines", type=int, default=0, help="write this many malformed lines too")
p.add_argument("--tensorboard", action="store_true", help="write event files as Sample Factory does, not JSON lines")
p.add_argument("--experiment", required=True)
p.add_argument("--train_dir", required=True)
a = p.parse_args()

out = os.path.join(a.train_dir, a.experiment)
os.makedirs(out, exist_ok=True)
checkpoint = os.path.join(out, "checkpoint")
start = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
if a.tensorboard:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(os.path.join(out, ".summary", "0"), flush_secs=1)
with open(os.environ["JQ_METRICS_FILE"], "a") as f:
    f.write("not json\\n" * a.bad_lines)
for step in range(start, a.steps):
    reward = 100 * a.lr * (step + 1) + a.seed
    loss = float("nan") if (a.lr, a.seed, step) == (0.2, 3, a.steps - 1) else a.seed / (a.lr * (step + 1))
    if a.tensorboard:
        writer.add_scalar("reward/reward", reward, 1000 * step)
        writer.add_scalar("len/len", step, 1000 * step)
    else:
        log_metrics(step=step, reward=reward, loss=loss)
    with open(checkpoint + ".tmp", "w") as f:  # written whole, then renamed: a kill mid-write leaves the old one
        f.write(str(step + 1))
    os.replace(checkpoint + ".tmp", checkpoint)
    if a.until and os.path.exists(a.until):
        break
    time.sleep(a.step_time)
if a.tensorboard:
    writer.close()
"""


def sweep(project, name: str, flags: str = "", lrs=(0.1, 0.2), seeds=(1, 2, 3)) -> str:
    project.write("train.py", TRAIN)
    project.write(
        f"{name}.py",
        f"""
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription({name!r}, experiments=[
            Experiment("t", "python train.py {flags}", ParamGrid([("lr", {list(lrs)!r}), ("seed", {list(seeds)!r})]).generate_params()),
        ])
    """,
    )
    return name


def jq_json(project, *args):
    return json.loads(project.jq(*args, "--json", check=True).stdout)


def logged(project, run: str) -> dict[str, list[dict]]:
    """What each job of the run wrote to its metrics files, by job name, attempt after attempt."""
    rows = project.sql(
        "select j.name, a.log_path from attempts a join jobs j on j.id = a.job_id "
        f"join runs r on r.id = j.run_id where r.name = '{run}' order by a.id"
    )
    lines: dict[str, list[dict]] = {}
    for row in rows:
        path = row["log_path"].removesuffix(".log") + ".metrics.jsonl"
        with open(path) as f:
            lines.setdefault(row["name"], []).extend(json.loads(line) for line in f)
    return lines


def last_values(lines: list[dict], key: str) -> float:
    return max((line["step"], line[key]) for line in lines if key in line)[1]


def test_a_launched_sweep_compares_its_learning_rates_over_seeds_as_the_jobs_logged_them(project):
    run = sweep(project, "lrs")
    project.jq("launch", run, "--no-progress", check=True)
    by_name = logged(project, run)
    jobs = {j["name"]: j for j in jq_json(project, "results", run)}
    assert set(jobs) == set(by_name) and len(jobs) == 6
    for name, lines in by_name.items():
        job = jobs[name]
        assert job["state"] == "succeeded" and job["duration_s"] > 0
        assert job["metrics"]["reward"]["last"] == last_values(lines, "reward")
        assert job["metrics"]["reward"]["count"] == 4 and job["metrics"]["reward"]["last_step"] == 3
    groups = jq_json(project, "results", run, "--group-by", "lr")
    assert [(g["group"], g["jobs"]) for g in groups] == [({"lr": 0.1}, 3), ({"lr": 0.2}, 3)]
    for group in groups:
        names = [j["name"] for j in jobs.values() if j["params"]["lr"] == group["group"]["lr"]]
        for key in ("reward", "loss"):
            lasts = [v for v in (last_values(by_name[n], key) for n in names) if not math.isnan(v)]  # NaN left out
            assert group["metrics"][key]["mean"] == pytest.approx(statistics.fmean(lasts), rel=1e-12)
            assert group["metrics"][key]["std"] == pytest.approx(statistics.stdev(lasts), rel=1e-12)
            assert (group["metrics"][key]["min"], group["metrics"][key]["max"]) == (min(lasts), max(lasts))

    # Lowest loss first; the diverged job's NaN last, in JSON as the string NaN.
    ranked = jq_json(project, "results", run, "--sort", "loss", "--min")
    losses = [r["metrics"]["loss"]["last"] for r in ranked]
    assert losses[-1] == "NaN" and losses[:-1] == sorted(losses[:-1])
    assert ranked[-1]["params"] == {"lr": 0.2, "seed": 3}
    table = project.jq("results", run, "--group-by", "lr", check=True).stdout.splitlines()
    assert table[0].split() == ["lr", "jobs", "reward", "loss"] and table[1].split()[:5] == ["0.1", "3", "42", "±", "1"]
    csv_lines = project.jq("results", run, "--sort", "reward", "--csv", check=True).stdout.splitlines()
    assert csv_lines[0] == "id,name,state,lr,seed,duration_s,reward,loss"
    assert csv_lines[1].split(",")[3:5] == ["0.2", "3"] and csv_lines[1].endswith(",83.0,NaN")

    status = project.jq("status", run, check=True).stdout
    best = jobs["05_t_lr_0.2_see_3"]
    assert f"{run}: best on reward so far: job {best['id']} 05_t_lr_0.2_see_3, 83 at step 3" in status
    (report,) = jq_json(project, "status", run, "--sort", "loss", "--min")["runs"]
    assert report["best"]["job"]["name"] == "03_t_lr_0.2_see_1" and report["best"]["key"] == "loss"


def test_jq_metrics_shows_a_jobs_points_by_attempt_and_the_file_it_was_given(sqlite_project):
    project = sqlite_project
    run = sweep(project, "one", "--steps=3", lrs=[0.1], seeds=[1])
    project.jq("launch", run, "--no-progress", check=True)
    (job,) = project.jobs(run)
    (attempt,) = project.sql(f"select log_path from attempts where job_id = {job['id']}")
    lines = project.jq("metrics", str(job["id"]), check=True).stdout.splitlines()
    assert [line.split() for line in lines[:-1]] == [
        ["attempt", "key", "step", "value"],
        ["1", "loss", "0", "10"],
        ["1", "loss", "1", "5"],
        ["1", "loss", "2", "3.33333"],
        ["1", "reward", "0", "11"],
        ["1", "reward", "1", "21"],
        ["1", "reward", "2", "31"],
    ]
    metrics_file = attempt["log_path"].removesuffix(".log") + ".metrics.jsonl"  # $JQ_METRICS_FILE, next to the log
    assert lines[-1] == f"attempt 1: 6 points from {metrics_file}"
    points = jq_json(project, "metrics", str(job["id"]), "reward")
    assert [(p["attempt"], p["key"], p["step"], p["value"]) for p in points] == [
        (1, "reward", s, 10.0 * s + 11) for s in range(3)
    ]
    assert all(abs(p["wall_time"] - time.time()) < 600 for p in points)
    csv_lines = project.jq("metrics", str(job["id"]), "loss", "--csv", check=True).stdout.splitlines()
    assert csv_lines[0] == "attempt,key,step,value,wall_time" and csv_lines[1].startswith("1,loss,0,10.0,")


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_job_killed_mid_run_and_resumed_keeps_the_points_of_both_attempts(project, how):
    # SIGINT: the launch hands the job back after storing what it logged. SIGKILL: the launch and its worker die
    # unread (the worker reads every 30 s by default); the attempt that runs the job next stores the first one's too.
    run = sweep(project, "killed", "--steps=30 --step_time=0.1", lrs=[0.1], seeds=[1])
    launch = project.start("launch", run, "--no-progress")
    checkpoint = project.path / "train_dir" / run / "t_" / "00_t_lr_0.1_see_1" / "checkpoint"
    project.wait_for(lambda: checkpoint.exists() and int(checkpoint.read_text() or 0) >= 5, what="five steps")
    launch.send_signal(getattr(signal, how))
    launch.communicate(timeout=60)
    if how == "SIGKILL":
        time.sleep(0.5)  # the worker's guard kills the job
    assert project.jobs(run)[0]["state"] == ("queued" if how == "SIGINT" else "running")
    project.jq("resume", run, "--no-progress", check=True)
    (job,) = project.jobs(run)
    assert job["state"] == "succeeded"
    points = jq_json(project, "metrics", str(job["id"]), "reward")
    steps = {attempt: [p["step"] for p in points if p["attempt"] == attempt] for attempt in (1, 2)}
    first, second = steps[1], steps[2]
    assert first == list(range(len(first))) and len(first) >= 5
    assert second == list(range(second[0], 30)) and second[0] in (len(first), len(first) - 1)
    sources = project.jq("metrics", str(job["id"]), check=True).stdout.splitlines()[-2:]
    assert [line.split(":")[0] for line in sources] == ["attempt 1", "attempt 2"]
    (row,) = jq_json(project, "results", run)
    assert row["metrics"]["reward"]["last_step"] == 29 and row["metrics"]["reward"]["count"] == len(first) + len(second)


def test_tensorboard_scalars_of_a_jobs_experiment_dir_are_its_metrics(project):
    run = sweep(project, "tb", "--tensorboard --steps=3", lrs=[0.1, 0.2], seeds=[1])
    project.jq("launch", run, "--no-progress", check=True)
    jobs = jq_json(project, "results", run, "--sort", "reward/reward")
    assert [j["params"]["lr"] for j in jobs] == [0.2, 0.1]
    assert jobs[0]["metrics"] == {
        "reward/reward": {"last": 61.0, "last_step": 2000, "min": 21.0, "max": 61.0, "count": 3},
        "len/len": {"last": 2.0, "last_step": 2000, "min": 0.0, "max": 2.0, "count": 3},
    }
    points = jq_json(project, "metrics", str(jobs[1]["id"]), "reward/reward")
    assert [(p["attempt"], p["step"], p["value"]) for p in points] == [(1, 0, 11.0), (1, 1000, 21.0), (1, 2000, 31.0)]
    (source,) = project.sql(f"select path, kind from metric_sources where job_id = {jobs[1]['id']}")
    assert source["kind"] == "tfevents"
    assert f"/train_dir/{run}/t_/{jobs[1]['name']}/.summary/0/events.out.tfevents." in source["path"]


def test_a_worker_without_tensorboardx_says_once_that_event_files_go_unread_and_stores_the_rest(
    sqlite_project, tmp_path
):
    from tensorboardX import SummaryWriter

    project = sqlite_project
    with SummaryWriter(str(project.path / "events")) as writer:
        writer.add_scalar("reward/reward", 1.0, 100)
    # Each job puts those event files where Sample Factory's would be, and logs a JSON line too.
    project.write(
        "copy_events.py",
        """
        import shutil, sys
        from jobqueue import log_metrics
        args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
        shutil.copytree("events", f"{args['train_dir']}/{args['experiment']}/.summary/0")
        log_metrics(step=1, loss=0.5)
    """,
    )
    project.sweep("no_tb", "python copy_events.py", 2)
    project.jq("enqueue", "no_tb", check=True)
    blocker = tmp_path / "blocker"
    (blocker / "tensorboardX").mkdir(parents=True)
    (blocker / "tensorboardX" / "__init__.py").write_text("raise ImportError('No module named tensorboardX')\n")
    worker = project.jq("worker", env=project.env(PYTHONPATH=f"{blocker}:{REPO}"))
    assert worker.returncode == 0, worker.stderr
    notices = [line for line in worker.stderr.splitlines() if "are not read" in line]
    assert len(notices) == 1 and notices[0].startswith("jq worker: metrics of job ")
    assert notices[0].endswith("that needs tensorboardX (pip install 'jobqueue[tensorboard]')")
    assert [(r["key"], r["n"]) for r in project.sql("select key, count(*) as n from metric_points group by key")] == [
        ("loss", 2)
    ]


def test_a_long_jobs_curve_is_in_the_db_while_it_runs(project):
    stop = project.path / "stop"
    run = sweep(project, "long", f"--steps=600 --step_time=0.05 --until={stop}", lrs=[0.1], seeds=[1])
    project.jq("enqueue", run, check=True)
    worker = project.start("worker", "--metrics-every", "0.5")
    try:
        (job,) = project.wait_for(
            lambda: [j for j in project.jobs(run) if j["state"] == "running"], what="the job to start"
        )
        stored = lambda: project.sql(f"select count(*) as n from metric_points where job_id = {job['id']}")[0]["n"]  # noqa: E731
        first = project.wait_for(stored, what="the first points", timeout=20)
        project.wait_for(lambda: stored() > first, what="more points", timeout=20)
        assert project.jobs(run)[0]["state"] == "running"
        (row,) = jq_json(project, "results", run)
        assert row["state"] == "running" and row["metrics"]["reward"]["count"] >= 1
    finally:
        stop.touch()
        worker.communicate(timeout=60)
    assert worker.returncode == 0
    lines = logged(project, run)["00_t_lr_0.1_see_1"]
    (row,) = jq_json(project, "results", run)
    assert row["metrics"]["reward"]["count"] == len(lines) and row["metrics"]["reward"]["last"] == last_values(
        lines, "reward"
    )


def test_bad_lines_are_counted_and_shown_by_jq_metrics_and_jq_status(project):
    run = sweep(project, "bad", "--steps=2 --bad_lines=3", lrs=[0.1], seeds=[1])
    project.jq("launch", run, "--no-progress", check=True)
    (job,) = project.jobs(run)
    out = project.jq("metrics", str(job["id"]), check=True).stdout
    assert out.splitlines()[-1].endswith(".metrics.jsonl, 3 bad lines skipped") and out.count("\n") == 6
    status = project.jq("status", run, check=True).stdout
    assert "; 3 bad metric lines or records skipped" in status
    (row,) = jq_json(project, "results", run)
    assert row["metrics"]["reward"]["count"] == 2


def test_the_table_shows_a_few_metrics_of_many_and_says_how_to_see_the_rest(sqlite_project):
    project = sqlite_project
    project.sweep(
        "many", "python -c 'from jobqueue import log_metrics; log_metrics(step=1, **{k: 1.0 for k in \"abcdefg\"})'", 2
    )
    project.jq("launch", "many", "--no-progress", check=True)
    proc = project.jq("results", "many", "--sort", "f", check=True)
    assert proc.stdout.splitlines()[0].split() == [
        "id",
        "name",
        "state",
        "i",
        "duration_s",
        "f",
        "a",
        "b",
        "c",
        "d",
        "e",
    ]
    assert (
        proc.stderr.strip() == "1 more metric not shown: choose with --metric KEY, or see them all with --json or --csv"
    )
    assert project.jq("results", "many", "--metric", "g", check=True).stdout.splitlines()[0].split()[-1] == "g"
    assert project.jq("results", "many", "--csv", check=True).stdout.splitlines()[0].endswith(",a,b,c,d,e,f,g")


def test_an_unknown_run_key_parameter_or_job_is_one_line_and_exit_2(sqlite_project):
    project = sqlite_project
    run = sweep(project, "known", "--steps=1", lrs=[0.1], seeds=[1])
    project.jq("launch", run, "--no-progress", check=True)
    for args, message in [
        (["results", "nope"], "jq: error: no run named 'nope' in this DB (runs: known); check the name or --db"),
        (
            ["results", run, "--sort", "acc"],
            "jq: error: --sort acc: no job of run 'known' has logged this metric (metrics: reward, loss)",
        ),
        (
            ["results", run, "--metric", "acc", "--json"],
            "jq: error: --metric acc: no job of run 'known' has logged this metric",
        ),
        (
            ["results", run, "--group-by", "batch"],
            "jq: error: --group-by batch: no job of run 'known' has this parameter",
        ),
        (["metrics", "99"], "jq: error: no job with id 99; `jq list` shows the ids"),
        (["status", run, "--sort", "acc"], "jq: error: --sort acc: no job of run 'known' has logged this metric"),
    ]:
        proc = project.jq(*args)
        assert (proc.returncode, proc.stdout) == (2, ""), args
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(message), (args, proc.stderr)
