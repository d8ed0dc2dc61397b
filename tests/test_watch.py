"""Watching a run whose workers run elsewhere: `jq status RUN --watch` and `jq launch --backend slurm --watch`."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest


def test_watch_follows_a_run_run_by_another_worker_and_exits_with_its_outcome(project):
    p = project
    p.sweep("elsewhere", "sh -c 'sleep 1; [ $0 != fail ]' job", 4)
    p.jq("enqueue", "elsewhere", check=True)
    worker = p.start("worker", "--slots", "2")
    started = time.monotonic()
    watched = p.jq("status", "elsewhere", "--watch", "--interval", "0.2", timeout=60)
    took = time.monotonic() - started
    assert worker.wait(30) == 0
    assert watched.returncode == 0, watched.stderr
    assert p.states() == {"succeeded": 4}
    assert 1.5 < took < 20, "it waited for the jobs, and stopped once they were done"
    assert (
        watched.stderr.strip()
        .splitlines()[-1]
        .startswith("elsewhere: 4/4 done | 4 succeeded, 0 failed, 0 running, 0 queued")
    )


def test_watch_exits_1_when_a_job_failed_and_names_the_run_to_watch(sqlite_project):
    p = sqlite_project
    p.sweep("bad", "sh -c 'exit 3' job", 1)
    p.sweep("other", "true", 1)
    p.jq("enqueue", "bad", check=True)
    p.jq("enqueue", "other", check=True)
    p.jq("worker")
    assert p.jq("status", "bad", "--watch").returncode == 1
    assert p.jq("status", "other", "--watch").returncode == 0
    unnamed = p.jq("status", "--watch")
    assert unnamed.returncode == 2
    assert unnamed.stderr == (
        "jq: error: name the run to watch, e.g. `jq status quickstart --watch`: this DB holds several runs, or none\n"
    )


@pytest.mark.slurm
def test_launch_on_slurm_with_watch_returns_when_the_run_is_done(sqlite_project, slurm_cluster):
    p = sqlite_project
    p.env = lambda **extra: dict(type(p).env(p, **slurm_cluster.env, **extra))
    p.sweep("watched", "sh -c 'sleep 1' job", 3)
    proc = p.jq(
        "launch",
        "watched",
        "--backend",
        "slurm",
        "--watch",
        "--slurm-workers",
        "2",
        "--slurm-gpus-per-job",
        "1",
        "--slurm-cpus-per-gpu",
        "1",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert p.states() == {"succeeded": 3}
    assert "watched: slurm workers submission" not in proc.stdout  # the submission's states go to the view (stderr)
    assert "watched: slurm submission" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("watched: 3/3 done | 3 succeeded")
    p.wait_for(
        lambda: not slurm_cluster.squeue(), timeout=30, what="the workers to leave"
    )  # an empty cluster for the next test


def enqueued(p) -> bool:
    """The detached launch has made its DB: it returned before it did."""
    return (p.path / "jobqueue.db").exists()


def detached_launch(p, *args: str) -> tuple[subprocess.Popen, int]:
    """`jq launch ... --detach` from a shell that stays; returns the shell (leader of its own process group) and the
    pid of the launch it left in the background."""
    command = shlex.join([sys.executable, "-m", "jobqueue", "launch", *args, "--detach"])
    shell = subprocess.Popen(
        ["sh", "-c", f"{command}; sleep 120"],
        cwd=p.path,
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = shell.stdout.readline()
    match = re.search(r"launched in the background \(pid (\d+)\); its output goes to (\S+)$", line.strip())
    assert match, line + shell.stderr.read() if shell.poll() is not None else line
    return shell, int(match[1])


def test_a_detached_launch_finishes_every_job_after_its_shell_and_process_group_are_killed(sqlite_project):
    p = sqlite_project
    p.sweep("detached", "sh -c 'sleep 1' job", 4)
    shell, launch_pid = detached_launch(p, "detached", "--max-parallel", "2")
    os.killpg(shell.pid, signal.SIGKILL)  # the terminal's process group, as a closed ssh session takes it down
    shell.wait(10)
    assert psutil.pid_exists(launch_pid)
    p.wait_for(lambda: enqueued(p) and p.states() == {"succeeded": 4}, timeout=60, what="the detached launch to finish")
    log = (p.path / "train_dir" / "detached" / "jq_launch.log").read_text()
    assert "detached: 4 new jobs enqueued" in log
    p.wait_for(
        lambda: not psutil.pid_exists(launch_pid) or psutil.Process(launch_pid).status() == psutil.STATUS_ZOMBIE,
        timeout=20,
        what="the detached launch to exit",
    )


def test_jq_cancel_stops_a_detached_launch(sqlite_project):
    p = sqlite_project
    p.sweep("stoppable", "sh -c 'sleep 60' job", 3)
    shell, launch_pid = detached_launch(p, "stoppable", "--max-parallel", "2")
    p.wait_for(lambda: enqueued(p) and p.states().get("running") == 2, timeout=30, what="two running jobs")
    assert "cancelled 3 jobs (2 were running)" in p.jq("cancel", "stoppable", check=True).stdout
    p.wait_for(
        lambda: not psutil.pid_exists(launch_pid) or psutil.Process(launch_pid).status() == psutil.STATUS_ZOMBIE,
        timeout=30,
        what="the detached launch to exit",
    )
    assert p.states() == {"cancelled": 3}
    os.killpg(shell.pid, signal.SIGKILL)
    shell.wait(10)
