"""Big sweeps in bounded memory: a grid streams from the sweep file to the rows, and the commands that read a run
read it a page at a time. Memory is measured (peak RSS of the real `jq` process); time never is."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from itertools import product

import pytest

from jobqueue import layout, queue, service
from jobqueue.db import open_db
from jobqueue.sweep import Experiment, GridCombinations, ParamGrid, RunDescription, expand, set_sweep_seed

GRID_SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("{run}", experiments=[
    Experiment("e", "true", ParamGrid([("seed", list(range({seeds}))), ("lr", list(range(1000)))]).generate_params()),
])
"""

# The peak RSS of `jq` at 200,000 jobs. Before the streaming, enqueue peaked at ~300 MB (every combination as a
# dict, then every job as a JobSpec), --dry-run --json and list higher still; each now stays within about twice
# what the command takes for a handful of jobs.
RSS_BOUND_MB = 100

PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, proc.returncode, proc.stderr.replace("\\n", " "))
"""


def peak_rss_mb(project, *args: str) -> int:
    """Run `jq ARGS` (output discarded) and return its peak RSS in MB; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "jobqueue", *args],
        cwd=project.path,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    ).stdout
    rss, code, stderr = out.split(" ", 2)
    assert code == "0", f"jq {' '.join(args)} exited {code}: {stderr}"
    return int(rss)


def test_a_200000_job_grid_is_enqueued_listed_and_enqueued_again_in_bounded_memory(sqlite_project):
    p = sqlite_project
    p.write("big.py", GRID_SWEEP.format(run="big", seeds=200))
    p.write("ngc.template", 'ngc batch run --name "{{ name }}" --commandline "{{ experiment_cmd }}"\n')
    peaks = {
        "enqueue --dry-run --json": peak_rss_mb(p, "enqueue", "big", "--dry-run", "--json"),
        "enqueue": peak_rss_mb(p, "enqueue", "big"),
        "enqueue again": peak_rss_mb(p, "enqueue", "big"),
        "list": peak_rss_mb(p, "list"),
        "list --json": peak_rss_mb(p, "list", "--json"),
        "sql": peak_rss_mb(p, "sql", "select * from jobs"),
        # A worker array per 1,001 queued jobs: the launch counts them, it does not read them.
        "launch --backend slurm": peak_rss_mb(p, "launch", "big", "--backend", "slurm", "--slurm-print-only"),
        # An NGC job per queued job: the launch reads them a page at a time.
        "launch --backend ngc": peak_rss_mb(
            p, "launch", "big", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--ngc-print-only"
        ),
    }
    assert all(mb < RSS_BOUND_MB for mb in peaks.values()), peaks
    assert p.sql("select count(*) as n, count(distinct name) as names, max(idx) as last from jobs") == [
        {"n": 200_000, "names": 200_000, "last": 199_999}
    ]
    assert "Nothing to add: all 200000 jobs" in p.jq("enqueue", "big", check=True).stdout


def test_a_shuffled_grid_keeps_the_order_a_shuffled_list_of_its_combinations_had(sqlite_project):
    """Runs enqueued before grids became lazy must find their jobs' names again."""
    values = [("seed", [3, 1, 4, 1, 5]), (("rnn", "rec"), ([False, 1], [True, 16])), ("lr", [0.1, 0.01, 0.001])]
    set_sweep_seed("file")
    shuffled = ParamGrid(values).generate_params(randomize=True)
    as_list = list(product(*(v for _, v in values)))
    random.Random("file:permutation:1").shuffle(as_list)
    assert [tuple(p.values()) for p in shuffled] == [(s, r[0], r[1], lr) for s, r, lr in as_list]


def test_grid_combinations_behave_like_the_list_they_stand_for():
    grid = ParamGrid([("a", [1, 2, 3]), (("b", "c"), ([0, "x"], [1, "y"]))]).generate_params()
    as_list = [{"a": a, "b": b, "c": c} for a, (b, c) in product([1, 2, 3], [(0, "x"), (1, "y")])]
    assert isinstance(grid, GridCombinations)
    assert grid == as_list and as_list == grid and len(grid) == 6 and list(grid) == list(grid)
    assert [grid[i] for i in range(-6, 6)] == as_list + as_list
    assert grid[1:5:2] == as_list[1:5:2] and grid + [{}] == as_list + [{}] and [{}] + grid == [{}] + as_list
    assert as_list[4] in grid and grid.index(as_list[4]) == 4 and repr(grid) == repr(as_list)
    with pytest.raises(IndexError):
        grid[6]


def test_a_runs_jobs_can_be_indexed_and_iterated_again_without_being_held():
    grid = ParamGrid([("x", list(range(7)))]).generate_params()
    run = RunDescription("r", [Experiment("a", "app", grid), Experiment("b", "app"), Experiment("c", "app", grid)])
    jobs = expand(run)
    listed = list(jobs)
    assert len(jobs) == 15 and [j.index for j in listed] == list(range(15))
    assert [(j.name, j.cmd, j.argv) for j in (jobs[i] for i in range(15))] == [(j.name, j.cmd, j.argv) for j in listed]
    assert [j.name for j in jobs] == [j.name for j in listed]


def test_a_big_dry_run_streams_columns_that_never_move_left_and_json_that_is_whole(sqlite_project):
    p = sqlite_project
    rows = layout.ALIGN_ROWS + 2_000  # names grow from 2 to 5 digits: the second page is wider
    p.sweep("wide", "app", rows)
    plain = p.jq("enqueue", "wide", "--dry-run", check=True).stdout.splitlines()
    jobs = json.loads(p.jq("enqueue", "wide", "--dry-run", "--json", check=True).stdout)
    assert plain[0] == f"wide: {rows} jobs (dry run, nothing written)" and len(plain) == rows + 2
    assert [line.split() for line in plain[2:]] == [[str(i), j["name"], *j["cmd"].split()] for i, j in enumerate(jobs)]
    starts = [line.index(" app ") for line in plain[2:]]
    first_page = starts[: layout.ALIGN_ROWS]
    assert len(set(first_page)) == 1 and len(set(starts[layout.ALIGN_ROWS :])) == 1 and starts[-1] > starts[0]
    assert plain[1].index("command") == starts[0] + 1


def test_a_duplicate_name_stops_a_dry_run_before_it_prints_anything(sqlite_project):
    p = sqlite_project
    p.write(
        "dupes.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("d", experiments=[
            Experiment("e", "app", ParamGrid([("a", list(range(5000)))]).generate_params()),
            Experiment("e", "app", ParamGrid([("a", [9, 8, 2])]).generate_params()),
            Experiment("e_a_1", "app", [{}, {}]),  # 00_e_a_1, 01_e_a_1: the second is also the first's
        ])
    """,
    )
    for args in (["--dry-run"], ["--dry-run", "--json"], []):
        proc = p.jq("enqueue", "dupes", *args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout[:200]
        assert "two jobs are named '02_e_a_2' (experiments 'e' and 'e')" in proc.stderr
    p.write("dupes.py", p.path.joinpath("dupes.py").read_text().replace("[9, 8, 2]", "[9, 8, 7]"))
    p.fails("enqueue", "dupes", "--dry-run", says="two jobs are named '01_e_a_1' (experiments 'e' and 'e_a_1')")


@pytest.fixture
def small_pages(monkeypatch):
    """Pages, chunks and windows of a few jobs, so that a test of a few thousand jobs crosses many of each."""
    monkeypatch.setattr(queue, "ENQUEUE_CHUNK", 700)
    monkeypatch.setattr(queue, "ID_WINDOW", 300)
    monkeypatch.setattr(layout, "ALIGN_ROWS", 400)


def run_of(n: int, cmd: str = "app", name: str = "r"):
    return expand(RunDescription(name, [Experiment("j", cmd, ParamGrid([("i", list(range(n)))]).generate_params())]))


def test_enqueue_in_chunks_adds_only_the_new_jobs_and_counts_the_changed_ones(project, small_pages):
    db = open_db(project.db)
    try:
        first = queue.enqueue(db, "r", run_of(2_000), sweep="s", train_dir="t")
        grown = queue.enqueue(db, "r", run_of(2_500, cmd="app --v2"), sweep="s", train_dir="t")
        assert (first.added, first.existing) == (2_000, 0)
        assert (grown.added, grown.existing, grown.changed, grown.first_changed) == (500, 2_000, 2_000, "00_j_i_0")
        names = [r["name"] for r in queue.list_jobs(db, "r", columns="jobs.name")]
        assert names == [j.name for j in run_of(2_500)]
    finally:
        db.dispose()


def test_list_pages_through_a_run_with_every_job_once_in_order_and_its_failures_tails(project, small_pages, tmp_path):
    db = open_db(project.db)
    try:
        queue.enqueue(db, "other", run_of(5, name="other"), sweep="s", train_dir="t")
        queue.enqueue(db, "r", run_of(2_500), sweep="s", train_dir="t")
        failed = _fail_some_jobs(db, "r", every=400, logs=tmp_path)
        out = io.StringIO()
        service.print_jobs(service.job_rows(db, "r", None, details=False), _Console(out))
        lines = out.getvalue().splitlines()
        assert lines[0].split() == ["id", "run", "name", "state", "tries", "exit", "command"]
        assert [line.split()[2] for line in lines if line.split()[0].isdigit()] == [j.name for j in run_of(2_500)]
        tails = [line.split()[3].rstrip(":") for line in lines if line.startswith("failed job")]
        assert tails == failed and [line.strip() for line in lines if line.startswith("    ")] == [
            f"log of {name}" for name in failed
        ]
        as_json = list(service.job_rows(db, "r", "failed"))
        assert [j["name"] for j in as_json] == failed and all(j["tail"] == [f"log of {j['name']}"] for j in as_json)
    finally:
        db.dispose()


def test_cancel_and_retry_of_a_run_move_it_window_by_window_and_leave_other_runs_alone(project, small_pages):
    db = open_db(project.db)
    try:
        for part in range(3):  # the run's ids come in three stretches, with another run's between them
            queue.enqueue(db, f"other{part}", run_of(200, name=f"other{part}"), sweep="s", train_dir="t")
            queue.enqueue(db, "r", run_of(800 * (part + 1)), sweep="s", train_dir="t")
        assert queue.cancel_jobs(db, run="r") == (2_400, [])
        assert queue.retry_jobs(db, run="r") == 2_400
        assert queue.cancel_jobs(db) == (3_000, [])
        assert queue.retry_jobs(db, run="r", failed_only=True) == 0
        counts = {(run, state): n for run, state, n in queue.status_counts(db)}
        assert counts == {
            ("other0", "cancelled"): 200,
            ("r", "cancelled"): 2_400,
            ("other1", "cancelled"): 200,
            ("other2", "cancelled"): 200,
        }
    finally:
        db.dispose()


def _fail_some_jobs(db, run: str, every: int, logs) -> list[str]:
    """Mark every `every`-th job of the run failed, with an attempt whose log says which job it was."""
    jobs = [j for j in queue.list_jobs(db, run, columns="jobs.id, jobs.name")][::every]
    worker = queue.register_worker(db, slots=1, gpus=None, backend="test", run_id=None)

    def fail(tx):
        for j in jobs:
            log = logs / f"{j['name']}.log"
            log.write_text(f"log of {j['name']}\n")
            tx.execute("UPDATE jobs SET state = 'failed', attempts = 1, exit_code = 1 WHERE id = :id", {"id": j["id"]})
            tx.execute(
                "INSERT INTO attempts (job_id, number, worker_id, host, state, started_at, log_path) "
                "VALUES (:id, 1, :w, 'h', 'failed', {now}, :log)",
                {"id": j["id"], "w": worker.id, "log": str(log)},
            )

    db.transact(fail)
    return [j["name"] for j in jobs]


class _Console:
    """What print_jobs uses of a rich Console: its file, and print() (markup is dropped)."""

    def __init__(self, file):
        self.file = file

    def print(self, text, markup=True):
        self.file.write(text.replace("[red]", "").replace("[/red]", "") + "\n")
