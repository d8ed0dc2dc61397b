"""The Slurm backend against a real single-node Slurm (slurmctld, slurmd, munge) with four fake GPUs."""

import re
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

EXPECTED = Path(__file__).parent / "expected"
TASK_JOB = (
    """sh -c 'echo "$JQ_JOB_ID start $(date +%s.%N) $SLURM_ARRAY_TASK_ID $CUDA_VISIBLE_DEVICES" >> ledger; """
    """sleep {secs}; echo "$JQ_JOB_ID end $(date +%s.%N) $SLURM_ARRAY_TASK_ID $CUDA_VISIBLE_DEVICES" >> ledger' job"""
)
SMALL = ["--slurm-gpus-per-job", "1", "--slurm-cpus-per-gpu", "1", "--slurm-signal-lead", "5", "--grace", "2"]


@pytest.fixture
def slurm_project(sqlite_project, slurm_cluster):
    p = sqlite_project
    base_env = p.env

    def env(**extra):
        return base_env(**slurm_cluster.env, **extra)

    p.env = env
    p.cluster = slurm_cluster
    yield p
    run_ids = [line.split()[0] for line in slurm_cluster.squeue()]
    if run_ids:  # leave the cluster empty for the next test
        slurm_cluster.run("scancel", *{i.split("_")[0] for i in run_ids}, check=False)
        p.wait_for(lambda: not slurm_cluster.squeue(), timeout=30, what="an empty squeue")


def ledger(p):
    rows = []
    for line in (p.path / "ledger").read_text().splitlines():
        job, what, when, task, gpus = line.split()
        rows.append((float(when), what, int(job), task, gpus))
    return sorted(rows)


def test_an_array_of_three_workers_drains_twelve_jobs_once_each_within_the_throttle(slurm_project):
    p = slurm_project
    p.sweep("drain", TASK_JOB.format(secs=0.5), 12)
    proc = p.jq("launch", "drain", "--backend", "slurm", "--slurm-workers", "3", "--slurm-max-running", "2", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "submitted an array of 3 workers as Slurm job" in proc.stdout
    p.wait_for(lambda: p.states() == {"succeeded": 12}, timeout=120, what="all jobs to succeed")
    rows = ledger(p)
    assert sorted(job for _, what, job, _, _ in rows if what == "start") == list(range(1, 13))
    running: dict[int, tuple] = {}
    peak = 0
    for _, what, job, task, gpus in rows:
        if what == "start":
            running[job] = (task, gpus)
            assert gpus in {"0", "1", "2", "3"}, "each worker sees the one GPU Slurm gave it"
            assert len({g for _, g in running.values()}) == len(running), "concurrent workers never share a GPU"
        else:
            running.pop(job)
        peak = max(peak, len(running))
    assert peak <= 2
    tasks = {task for _, _, _, task, _ in rows}
    assert tasks <= {"0", "1", "2"} and len(tasks) >= 2
    workers = p.sql("select slurm_job_id, slurm_array_task_id, backend from workers")
    (submission,) = p.sql("select external_id, tasks, state from submissions")
    assert {w["slurm_job_id"] for w in workers} == {submission["external_id"]} and submission["tasks"] == 3
    assert {w["backend"] for w in workers} == {"slurm"}
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="the array to finish")
    status = p.jq("status", "drain", check=True).stdout
    assert f"slurm workers submission {submission['external_id']} (3 workers): finished" in status


def normalized_print_only(p, *args):
    out = p.jq("launch", "printed", "--backend", "slurm", "--slurm-print-only", *args, check=True).stdout
    return out.replace(str(p.path), "<PROJECT>").replace(sys.executable, "<PYTHON>")


def test_print_only_prints_the_scripts_and_commands_and_submits_nothing(slurm_project):
    p = slurm_project
    p.write(
        "printed.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("printed", experiments=[
            Experiment("e", "python train.py", ParamGrid([("seed", [1, 2, 3])]).generate_params()),
        ])
    """,
    )
    workers = normalized_print_only(
        p,
        "--slurm-workers",
        "2",
        "--slurm-max-running",
        "1",
        "--slurm-partition",
        "gpu",
        "--slurm-time-limit",
        "1:00:00",
        "--slurm-cpus-per-gpu",
        "8",
    )
    per_job = normalized_print_only(
        p, "--slurm-mode", "per-job", "--slurm-gpus-per-job", "0", "--slurm-cpus-per-gpu", "4"
    )
    expected = (EXPECTED / "slurm_print_only.txt").read_text()
    assert workers + "----\n" + per_job == expected
    assert p.sql("select count(*) as n from submissions") == [{"n": 0}]
    assert not (p.path / "slurm").exists()
    assert p.cluster.squeue() == []


def test_home_and_other_shell_variables_in_a_template_survive(slurm_project):
    p = slurm_project
    p.sweep("templated", "true", 1)
    template = p.write(
        "my_template.sh",
        """\
        #!/bin/bash
        # partition: [$PARTITION], gpus $GPU, cpus $CPU, time $TIMEOUT
        cd $HOME && echo "${SLURM_JOB_ID} ran $FILENAME for $JQ_RUN" >> $JQ_DB.log
        timeout $TIMEOUT $CMD
    """,
    )
    out = p.jq(
        "launch",
        "templated",
        "--backend",
        "slurm",
        "--slurm-print-only",
        "--slurm-sbatch-template",
        str(template),
        "--slurm-timeout",
        "3:00",
        "--slurm-partition",
        "debug",
        check=True,
    ).stdout
    assert 'cd $HOME && echo "${SLURM_JOB_ID} ran ' in out
    # Sample Factory's texts: $PARTITION ends with a space (its templates write `$PARTITION--gres=...`), and
    # --slurm-timeout is timeout(1)'s duration in the script, not sbatch's time limit.
    assert "# partition: [-p debug ], gpus 1, cpus 14, time 3:00" in out
    assert "--time" not in out
    assert 'for templated" >> sqlite:///' in out
    assert re.search(r"timeout 3:00 \S*python\S* -m jobqueue worker --db sqlite:///\S+ --backend slurm", out)


def test_cancel_leaves_nothing_in_squeue_and_no_job_running(slurm_project):
    p = slurm_project
    p.sweep("long", "sh -c 'sleep 60' job", 4)
    p.jq("launch", "long", "--backend", "slurm", "--slurm-workers", "2", *SMALL, check=True)
    p.wait_for(lambda: p.states().get("running") == 2, timeout=60, what="two running jobs")
    out = p.jq("cancel", "long", check=True).stdout
    assert "cancelled 4 jobs (2 were running)" in out and "scancel" in out
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="an empty squeue")
    assert p.states() == {"cancelled": 4}


def test_cancel_of_a_per_job_run_scancels_a_chunk_of_ids_a_call(slurm_project, monkeypatch):
    """One sbatch per job: the cancel's scancel calls each name a bounded number of ids, not the whole run."""
    from jobqueue.backends import slurm
    from jobqueue.db import open_db

    p = slurm_project
    p.sweep("each", "sh -c 'sleep 60' job", 3)
    p.jq("launch", "each", "--backend", "slurm", "--slurm-mode", "per-job", *SMALL, check=True)
    ids = [s["external_id"] for s in p.sql("select external_id from submissions order by id")]
    assert len(ids) == 3
    for name, value in p.cluster.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(slurm, "IDS_PER_CALL", 2)
    db = open_db(p.db)
    try:
        lines = slurm.cancel_run(db, {"id": 1, "name": "each"})
    finally:
        db.dispose()
    assert lines == [f"scancel {ids[0]} {ids[1]}", f"scancel {ids[2]}"]
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="an empty squeue")
    assert [s["state"] for s in p.sql("select state from submissions")] == ["cancelled"] * 3


def test_a_preempted_worker_hands_its_jobs_back_and_the_requeued_task_finishes_the_run(slurm_project):
    p = slurm_project
    p.sweep("preempt", TASK_JOB.format(secs=3), 3)
    out = p.jq("launch", "preempt", "--backend", "slurm", "--slurm-workers", "1", *SMALL, check=True).stdout
    slurm_id = re.search(r"as Slurm job (\d+)", out).group(1)
    task = f"{slurm_id}_0"
    p.wait_for(lambda: p.states().get("running") == 1, timeout=60, what="a running job")
    p.cluster.run("scancel", "--signal=USR1", "--batch", task)
    p.wait_for(
        lambda: p.sql("select count(*) as n from attempts where state = 'interrupted'")[0]["n"] == 1,
        timeout=30,
        what="the job to be handed back",
    )
    assert p.states().get("running", 0) == 0
    # As on a real preemption, the task is requeued once its batch script (the worker) has ended.
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="the worker to exit")

    def diagnose() -> str:
        logs = "\n".join(f"{f.name}: {f.read_text()}" for f in sorted((p.path / "slurm").glob("*.out")))
        return (
            f"squeue: {p.cluster.squeue()}\n{p.cluster.run('scontrol', 'show', 'job', task, check=False).stdout}\n"
            f"jobs: {p.states()}\nattempts: {p.sql('select job_id, number, state, reason from attempts')}\n{logs}\n"
            f"slurmd.log: {(p.cluster.root / 'log' / 'slurmd.log').read_text()[-3000:]}"
        )

    def running_again() -> bool:
        """Requeue the task and release it from its ~120 s hold. slurmd remembers a job it was just told to
        signal and may refuse to relaunch it ("already killed, do not launch batch job", exit 1): then
        requeue it again, as an operator would. A real preemption requeues inside Slurm."""
        state = p.cluster.run("scontrol", "show", "job", task, check=False).stdout
        if "JobState=RUNNING" in state or "JobState=COMPLETED" in state:
            return True
        if "JobState=PENDING" in state:
            p.cluster.run("scontrol", "update", f"jobid={task}", "starttime=now", check=False)
        else:
            p.cluster.run("scontrol", "requeue", task, check=False)
        time.sleep(0.5)
        return False

    p.wait_for(running_again, timeout=120, what="the requeued task to run again", diagnose=diagnose)
    p.wait_for(
        lambda: p.states() == {"succeeded": 3},
        timeout=120,
        what="the requeued task to finish the run",
        diagnose=diagnose,
    )
    attempts = p.sql("select job_id, state from attempts order by id")
    assert sorted(a["job_id"] for a in attempts if a["state"] == "succeeded") == [1, 2, 3]
    assert [a["state"] for a in attempts].count("interrupted") == 1
    starts = [job for _, what, job, _, _ in ledger(p) if what == "start"]
    assert len(starts) == 4  # three jobs, one of them started twice: handed back, then run to the end


def test_resume_submits_a_new_array_when_the_old_workers_are_gone(slurm_project):
    p = slurm_project
    p.sweep("again", TASK_JOB.format(secs=1), 4)
    out = p.jq("launch", "again", "--backend", "slurm", "--slurm-workers", "1", *SMALL, check=True).stdout
    first = re.search(r"as Slurm job (\d+)", out).group(1)
    p.wait_for(lambda: p.states().get("running") == 1, timeout=60, what="a running job")
    p.cluster.run("scancel", first)  # the array is gone (preempted, cancelled by an admin...)
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="the array to leave squeue")
    assert "running" not in p.states()
    resumed = p.jq("resume", "again", "--no-progress", check=True).stdout
    second = re.search(r"as Slurm job (\d+)", resumed).group(1)
    assert second != first
    p.wait_for(lambda: p.states() == {"succeeded": 4}, timeout=120, what="the new array to finish the run")
    assert [s["external_id"] for s in p.sql("select external_id from submissions order by id")] == [first, second]


def test_a_launch_from_inside_an_array_task_gives_its_per_job_submissions_no_array_variables(slurm_project):
    """sbatch passes on the environment it runs in: a launch run inside an array task must not hand that array's
    SLURM_ARRAY_TASK_ID to jobs that are not array tasks, where a training script would read it as its own."""
    p = slurm_project
    p.sweep(
        "inner",
        """sh -c 'echo "$JQ_JOB_ID ${SLURM_ARRAY_TASK_ID:-none} ${SLURM_ARRAY_JOB_ID:-none}" >> ledger' job""",
        2,
    )
    inside = p.env(SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="7", SLURM_ARRAY_TASK_COUNT="8")
    p.jq("launch", "inner", "--backend", "slurm", "--slurm-mode", "per-job", *SMALL, env=inside, check=True)
    p.wait_for(lambda: p.states() == {"succeeded": 2}, timeout=120, what="both jobs to succeed")
    assert sorted((p.path / "ledger").read_text().splitlines()) == ["1 none none", "2 none none"]
    workers = p.sql("select slurm_job_id, slurm_array_task_id from workers order by id")
    assert [w["slurm_array_task_id"] for w in workers] == [None, None]
    assert "4242" not in {w["slurm_job_id"] for w in workers}


SF_VENV = Path(__file__).resolve().parent.parent / ".venv-sf"


def sample_factory_template() -> str:
    """Sample Factory 2.1.1's own sbatch_timeout.sh, as its wheel ships it, less its conda and cd lines."""
    from tests.conftest import service_unavailable

    found = sorted(SF_VENV.glob("lib/python*/site-packages/sample_factory/launcher/slurm/sbatch_timeout.sh"))
    if not found:
        service_unavailable(
            "Sample Factory 2.1.1 (.venv-sf, made by tests/setup.sh)", "its sbatch_timeout.sh is missing"
        )
    lines = found[0].read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(("conda activate", "cd "))]
    assert len(kept) == len(lines) - 2 and any("timeout $TIMEOUT $CMD" in line for line in kept)
    return "".join(kept)


def test_sample_factorys_timeout_template_resubmits_its_worker_until_every_job_succeeds_once(slurm_project):
    """sbatch_timeout.sh runs `timeout $TIMEOUT $CMD` and, on exit 124, submits itself again with
    `sbatch $PARTITION--gres=gpu:$GPU -c $CPU ...`: it needs $PARTITION's trailing space and $TIMEOUT as timeout(1)'s."""
    p = slurm_project
    template = p.write("sbatch_timeout.sh", sample_factory_template())
    p.sweep("chained", TASK_JOB.format(secs=2), 4)
    proc = p.jq(
        "launch",
        "chained",
        "--backend",
        "slurm",
        "--slurm-sbatch-template",
        str(template),
        "--slurm-partition",
        "debug",
        "--slurm-timeout",
        "3",
        "--slurm-workers",
        "1",
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr
    p.wait_for(
        lambda: p.states() == {"succeeded": 4},
        timeout=150,
        what="all jobs to succeed",
        diagnose=lambda: "\n".join(f.read_text() for f in (p.path / "slurm").glob("*.out")),
    )
    outcomes = p.sql("select job_id, state from attempts order by id")
    assert sorted(a["job_id"] for a in outcomes if a["state"] == "succeeded") == [1, 2, 3, 4]
    assert {a["state"] for a in outcomes} <= {"succeeded", "interrupted"}
    assert any(a["state"] == "interrupted" for a in outcomes), "timeout stopped a worker mid-job at least once"
    rows = ledger(p)
    starts = [job for _, what, job, _, _ in rows if what == "start"]
    ends = [job for _, what, job, _, _ in rows if what == "end"]
    assert sorted(ends) == [1, 2, 3, 4], "each job ran to its end exactly once"
    assert len(starts) > 4
    workers = p.sql("select slurm_job_id, slurm_array_task_id from workers order by id")
    assert len(workers) >= 2
    # The first worker is task 0 of jq's array; those the template resubmitted from inside it are jobs of their own,
    # which inherit the array's variables: each records its own job id, not the array's.
    (submission,) = p.sql("select external_id from submissions")
    assert workers[0] == {"slurm_job_id": submission["external_id"], "slurm_array_task_id": 0}
    assert all(w["slurm_array_task_id"] is None for w in workers[1:]), workers
    assert len({w["slurm_job_id"] for w in workers}) == len(workers), workers
    # The resubmitted workers write `$FILENAME-slurm-%j.out`, as the template says.
    assert list((p.path / "slurm").glob("jq_chained_workers.sh-slurm-*.out")), "the template submitted its worker again"
    p.wait_for(lambda: not p.cluster.squeue(), timeout=30, what="the last worker to leave")
    assert all("error" not in f.read_text() for f in (p.path / "slurm").glob("*.out"))
