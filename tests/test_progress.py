"""The progress view of `jq launch`: an ETA that knows jobs run in parallel, plain lines off a terminal, a bar on
one, and each failure shown once with its job's name and its log's last line."""

import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from jobqueue.db import open_db
from jobqueue.progress import ProgressView, time_left

PLAIN_LINE = re.compile(
    r"^grid: (\d)/6 done \| (\d) succeeded, 0 failed, (\d) running, (\d) queued \| elapsed \d\d:\d\d, ETA (\d\d:\d\d|--:--)$"
)


def db_now() -> datetime:
    """The DB's clock (naive UTC; both databases run on this machine)."""
    return datetime.now(UTC).replace(tzinfo=None)


def first_started(db, run: str) -> datetime | None:
    """When the run's first job started, once one has."""
    rows = db.transact(
        lambda tx: tx.dicts(
            "SELECT min(j.started_at) AS started_at FROM jobs j JOIN runs r ON r.id = j.run_id WHERE r.name = :run",
            {"run": run},
        ),
        write=False,
    )
    return rows[0]["started_at"] if rows else None


@pytest.mark.parametrize(
    "mean, running_for, queued, parallel, expected",
    [
        (2.0, [1.0, 1.0], 2, 2, 3.0),  # both slots free in 1 s, then one more round
        (2.0, [1.5, 0.5], 3, 2, 4.5),  # the odd job goes to the slot that frees first: 0.5 + 2 + 2
        (2.0, [], 4, 4, 2.0),  # idle slots start the queue now
        (2.0, [3.0, 0.5], 0, 2, 1.5),  # the tail: the youngest running job ends last; an overdue one ends any moment
        (2.0, [], 3, 0, None),  # nothing to run the queue
    ],
)
def test_time_left_spreads_the_queue_over_the_slots_as_they_free(mean, running_for, queued, parallel, expected):
    assert time_left(mean, running_for, queued, parallel) == expected


def test_six_two_second_jobs_on_two_slots_at_half_way_the_eta_is_within_a_fifth_of_the_time_left(project):
    """The truth is 6 s; half-way, 2 jobs are done and the 2 running are half through: 3 s left. Dividing the elapsed
    time by the jobs done, as if one job ran at a time, says 6 s or more."""
    project.sweep("grid", "sh -c 'sleep 2' job", 6)
    launch = project.start("launch", "grid", "--max-parallel", "2")
    db = open_db(project.db)
    try:
        view = ProgressView(db, "grid", enabled=False)  # as the launch's own, but asked when the test chooses
        started = project.wait_for(lambda: first_started(db, "grid"), what="the first job to start")
        time.sleep(max(0.0, (started - db_now()).total_seconds() + 3.0))
        estimate, asked_at = view.estimate(), db_now()
        assert launch.wait(60) == 0, launch.stderr.read()
        (ended,) = db.transact(lambda tx: tx.dicts("SELECT max(ended_at) AS ended_at FROM jobs"), write=False)
    finally:
        db.dispose()
    truth = (ended["ended_at"] - asked_at).total_seconds()
    assert (estimate.done, estimate.counts["running"], estimate.counts["queued"]) == (2, 2, 2), estimate
    assert estimate.parallel == 2
    assert abs(estimate.eta_seconds - truth) <= 0.2 * truth, (estimate, truth)

    lines = [line for line in launch.stderr.read().splitlines() if line.startswith("grid: ")]
    parsed = [PLAIN_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert lines[-1].startswith("grid: 6/6 done | 6 succeeded, 0 failed, 0 running, 0 queued |") and lines[-1].endswith(
        "ETA 00:00"
    )
    counts_shown = [m.groups()[:4] for m in parsed[:-1]]  # the last line comes at the end, whatever changed
    assert len(counts_shown) == len(set(counts_shown)), lines  # a line when the counts change, not every tick
    second_round = [m.group(5) for m in parsed if m.group(1) == "2"]
    assert second_round and second_round[0] in ("00:03", "00:04"), lines


def test_each_failed_attempt_is_shown_once_with_its_job_name_and_its_log_s_last_line(project):
    project.sweep("bad", """sh -c 'echo warming up; echo "ValueError: bad lr in attempt $JQ_ATTEMPT"; exit 3' job""", 2)
    launch = project.jq("launch", "bad", "--max-attempts", "2")
    assert launch.returncode == 1, launch.stderr
    for job in project.jobs("bad"):
        shown = [line for line in launch.stderr.splitlines() if f" {job['name']}: failed" in line]
        assert [line.split(" | log: ")[1] for line in shown] == [
            "ValueError: bad lr in attempt 1",
            "ValueError: bad lr in attempt 2",
        ], launch.stderr
        assert shown[0].startswith(f"job {job['id']} {job['name']}: failed, queued again for another attempt")
        assert "exit code 3" in shown[1]


def test_jobs_that_succeed_are_not_shown_whatever_words_their_names_hold(project):
    """The view shows what went wrong, told by the worker, not found by words in the message: a job named after a
    failure that succeeds is not a failure, and its start is not news either."""
    project.write(
        "words.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("words", experiments=[
            Experiment("failed_timeout_lost", "true", ParamGrid([("database", [0, 1])]).generate_params()),
        ])
    """,
    )
    launch = project.jq("launch", "words")
    assert launch.returncode == 0, launch.stderr
    assert "failed_timeout_lost" not in launch.stdout + launch.stderr
    assert project.states() == {"succeeded": 2}


def test_on_a_terminal_the_run_has_a_bar_with_its_counts_and_eta_and_failures_print_above_it(sqlite_project):
    project = sqlite_project
    project.sweep("mixed", """sh -c '[ "$JQ_JOB_ID" != 2 ] || { echo "disk full"; exit 1; }; sleep 0.5' job""", 4)
    main, other = pty.openpty()
    env = project.env(COLUMNS="160", TERM="xterm")
    launch = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "launch", "mixed", "--max-parallel", "2"],
        cwd=project.path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=other,
    )
    os.close(other)
    shown, deadline = b"", time.monotonic() + 60
    while select.select([main], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the launch closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert launch.wait(30) == 1
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    (failure,) = [line for line in text.splitlines() if ": failed" in line]
    assert re.search(r"job 2 \S+: failed in \d+\.\ds; exit code 1 \| log: disk full", failure), text
    assert "━" in text  # the bar
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(
        r"^mixed ━+ 4/4 done \| 3 succeeded, 1 failed, 0 running, 0 queued \| elapsed \d\d:\d\d, ETA 00:00$", last
    ), last
