"""The Python API (jobqueue.open_queue): a notebook reads what `jq` shows, on both databases, a page at a time,
without writing and without importing pandas until it is asked for a DataFrame."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from datetime import datetime

import pytest

import jobqueue
from jobqueue import results
from jobqueue.api import Job
from jobqueue.db import open_db
from jobqueue.errors import UserError
from jobqueue.metrics import metrics_file_for
from tests.conftest import REPO

pandas = pytest.importorskip("pandas")

TRAIN = """
    import os, sys
    # A worker sets $JQ_METRICS_FILE and stores the file; if this one does not, the test stores it (run_story).
    os.environ.setdefault("JQ_METRICS_FILE", f"metrics-{os.environ['JQ_JOB_ID']}-{os.environ['JQ_ATTEMPT']}.jsonl")
    from jobqueue import log_metrics

    args = dict(arg.lstrip("-").split("=", 1) for arg in sys.argv[1:])
    lr, seed = float(args["lr"]), int(args["seed"])
    for step in (1, 2, 3):
        log_metrics(step=step, reward=lr * step * seed, loss=1 / (step + seed))
    if (lr, seed) == (0.3, 2):  # diverges, then crashes
        log_metrics(step=4, reward=float("nan"))
        sys.exit(1)
    if seed == 3:
        log_metrics(accuracy=0.5 + lr)  # a metric only some jobs log, without a step
"""


def run_story(project) -> None:
    """Six jobs of a sweep over lr and seed, run by a real worker; one fails. Each logs reward and loss."""
    project.write("train.py", TRAIN)
    project.write(
        "story.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("story", experiments=[
            Experiment("train", "python train.py", ParamGrid([("lr", [0.1, 0.3]), ("seed", [1, 2, 3])]).generate_params()),
        ])
    """,
    )
    project.jq("enqueue", "story", check=True)
    assert project.jq("worker", "--slots", "2", "-q").returncode == 1  # one job failed
    db = open_db(project.db)
    for a in project.sql("SELECT id, job_id, number, log_path FROM attempts"):
        for path in (metrics_file_for(a["log_path"]), str(project.path / f"metrics-{a['job_id']}-{a['number']}.jsonl")):
            if (project.path / path).exists():  # stored once, whoever reads it first
                results.collect(db, a["job_id"], a["id"], experiment_dir=None, metrics_file=path)
    db.dispose()


RESULTS_ASKED = [
    {},
    {"sort": "reward"},
    {"sort": "loss", "minimize": True, "metrics": ["loss"]},
    {"sort": "reward", "group_by": "lr"},
    {"group_by": ["lr", "seed"], "metrics": ["accuracy"]},
]


def results_options(sort=None, minimize=False, group_by=(), metrics=()) -> list[str]:
    """The options of `jq results` that ask what open_queue().results() is asked with these keywords."""
    group_by = [group_by] if isinstance(group_by, str) else group_by
    return (
        (["--sort", sort] if sort else [])
        + (["--min"] if minimize else [])
        + [o for p in group_by for o in ("--group-by", p)]
        + [o for k in metrics for o in ("--metric", k)]
    )


def as_time(value):
    """A time as `jq list --json` or `jq sql --json` prints it, as the datetime it stands for."""
    return value if value is None else datetime.fromisoformat(value)


def test_a_notebook_reads_runs_jobs_attempts_results_and_metrics_as_jq_shows_them(project):
    run_story(project)
    cli_jobs = project.jobs("story")
    cli_attempts = project.sql("SELECT * FROM attempts ORDER BY id")
    (cli_run,) = project.sql("SELECT * FROM runs")
    (status,) = json.loads(project.jq("status", "--json", check=True).stdout)["runs"]
    with jobqueue.open_queue(project.db) as q:
        (run,) = q.runs()
        assert (run.id, run.name, run.sweep, run.train_dir, run.cwd) == tuple(
            cli_run[k] for k in ("id", "name", "sweep", "train_dir", "cwd")
        )
        assert run.created_at == as_time(cli_run["created_at"])
        assert run.counts == status["counts"] and run.total == 6 and run.counts["failed"] == 1

        jobs = list(q.jobs("story"))
        assert len(jobs) == 6 and all(isinstance(j, Job) for j in jobs)
        assert list(q.jobs(run)) == jobs  # a Run stands for its name
        fields = {f.name for f in dataclasses.fields(Job)}
        for job, shown in zip(jobs, cli_jobs):
            for key, value in ((k, v) for k, v in shown.items() if k in fields):  # not a failed job's log tail
                mine = getattr(job, key)
                assert mine == (as_time(value) if key.endswith("_at") else value), (key, mine, value)
        failed = list(q.jobs("story", state="failed"))
        assert (
            [j.name for j in failed]
            == [j["name"] for j in cli_jobs if j["state"] == "failed"]
            == ["04_train_lr_0.3_see_2"]
        )
        assert list(q.jobs("story", state="running")) == []

        attempts = [a for job in jobs for a in q.attempts(job)]
        assert [a.id for a in attempts] == [a["id"] for a in cli_attempts]
        for attempt, shown in zip(attempts, cli_attempts):
            assert dataclasses.asdict(attempt) == {k: as_time(v) if k.endswith("_at") else v for k, v in shown.items()}
        assert [a.state for a in q.attempts(failed[0].id)] == ["failed"]

        # The same numbers as `jq results --json`, however they are asked for.
        for kwargs in RESULTS_ASKED:
            mine = [dataclasses.asdict(r) for r in q.results("story", **kwargs)]
            shown = json.loads(project.jq("results", "story", "--json", *results_options(**kwargs), check=True).stdout)
            assert mine and [results.jsonable(r) for r in mine] == shown, kwargs
        ranked = list(q.results("story", sort="reward"))
        assert ranked[0].params == {"lr": 0.3, "seed": 3} and ranked[0].metrics["reward"].last == pytest.approx(2.7)
        assert ranked[-1].name == failed[0].name and math.isnan(ranked[-1].metrics["reward"].last)
        (by_lr, _) = q.results("story", group_by="lr")
        assert by_lr.group == {"lr": 0.1} and by_lr.jobs == 3 and by_lr.metrics["reward"].mean == pytest.approx(0.6)

        for job in jobs:
            shown = json.loads(project.jq("metrics", str(job.id), "--json", check=True).stdout)
            assert [results.jsonable(dataclasses.asdict(p)) for p in q.metrics(job)] == shown
        points = list(q.metrics(failed[0], "reward"))
        assert [p.step for p in points] == [1, 2, 3, 4] and math.isnan(points[-1].value) and points[0].attempt == 1
        assert [p.key for p in q.metrics(jobs[2].id, ["accuracy", "loss"])] == ["accuracy"] + ["loss"] * 3


def test_unknown_runs_jobs_states_and_metrics_raise_the_clis_error_where_they_are_named(project):
    run_story(project)
    with jobqueue.open_queue(project.db) as q:
        for call, cli in [
            (lambda: q.jobs("nope"), ["list", "--run", "nope"]),
            (lambda: q.results("nope"), ["results", "nope"]),
            (lambda: q.attempts(999999), ["metrics", "999999"]),
            (lambda: q.metrics(999999), ["metrics", "999999"]),
            (lambda: q.results("story", sort="acc"), ["results", "story", "--sort", "acc"]),
            (lambda: q.results("story", group_by="batch"), ["results", "story", "--group-by", "batch"]),
            (lambda: q.metrics(1, "acc"), ["metrics", "1", "acc"]),
            (lambda: q.jobs("story", state="runing"), None),
        ]:
            with pytest.raises(UserError) as raised:
                call()  # before any iteration
            if cli:
                assert project.jq(*cli).stderr == f"jq: error: {raised.value}\n"
        assert "no job with id 999999" in str(pytest.raises(UserError, q.attempts, 999999).value)
        assert "--sort acc: no job of run 'story' has logged this metric" in str(
            pytest.raises(UserError, q.results, "story", sort="acc").value
        )
        assert "unknown state; use one of queued, running" in str(
            pytest.raises(UserError, q.jobs, "story", state="runing").value
        )


def test_the_queue_cannot_write_and_on_postgresql_holds_no_transaction_between_calls(project):
    run_story(project)
    db = open_db(project.db)
    with jobqueue.open_queue(project.db) as q:
        list(q.jobs("story"))
        cursor = q._reader.conn.cursor()
        if db.is_sqlite:
            with pytest.raises(sqlite3.OperationalError, match="readonly|query_only|read-only"):
                cursor.execute("UPDATE runs SET suffix = suffix")
            return
        import psycopg

        assert session_of(db)["state"] == "idle"  # the jobs were read and their transaction is over
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            cursor.execute("UPDATE runs SET suffix = suffix")
        q._reader.conn.rollback()


def session_of(db) -> dict:
    """pg_stat_activity's row of the one other session on the test's database: the queue's."""
    rows = db.transact(
        lambda tx: tx.dicts(
            "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ),
        write=False,
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_a_big_run_is_read_a_page_at_a_time_and_is_in_memory_only_when_listed(project):
    jobs = 20_000
    project.sweep("big", "true", jobs)
    project.jq("enqueue", "big", check=True)
    db = open_db(project.db)
    with jobqueue.open_queue(project.db) as q:
        for read in (lambda: q.jobs("big"), lambda: q.results("big")):
            tracemalloc.start()
            listed = list(read())
            whole = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del listed
            tracemalloc.start()
            count = sum(1 for _ in read())
            streamed = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert count == jobs
            # Iterating holds a page of rows, two while the next replaces it; a list holds them all.
            assert streamed < whole * 3 * results.FETCH_ROWS / jobs, (streamed, whole)

        jobs = iter(q.jobs("big"))
        assert next(jobs).name.startswith("00_")
        if not db.is_sqlite:  # the rows come from a server-side cursor, FETCH_ROWS at a time
            session = session_of(db)
            assert session["state"] == "idle in transaction"
            fetched = re.match(r'FETCH FORWARD (\d+) FROM "jq_stream_\d+"', session["query"])
            assert fetched and int(fetched.group(1)) == results.FETCH_ROWS
        assert sum(1 for _ in jobs) == 19_999
        if not db.is_sqlite:
            assert session_of(db)["state"] == "idle"
            for _ in q.jobs("big"):
                break  # a loop left early ends the transaction too
            assert session_of(db)["state"] == "idle"
    db.dispose()


def test_to_pandas_gives_the_records_and_the_results_table_jq_writes_as_csv(project):
    run_story(project)
    with jobqueue.open_queue(project.db) as q:
        jobs = list(q.jobs("story"))
        frame = q.jobs("story").to_pandas()
        assert list(frame.columns) == [f.name for f in dataclasses.fields(Job)]
        assert frame["id"].tolist() == [j.id for j in jobs] and frame["params"].tolist() == [j.params for j in jobs]
        assert frame["ended_at"].tolist() == [j.ended_at for j in jobs]
        assert q.runs().to_pandas()["total"].tolist() == [6]
        assert q.attempts(jobs[0]).to_pandas()["state"].tolist() == ["succeeded"]
        assert q.metrics(jobs[0], "loss").to_pandas()["value"].tolist() == [p.value for p in q.metrics(jobs[0], "loss")]
        assert len(list(q.attempts(frame["id"][0]))) == 1  # an id from a DataFrame is numpy's
        no_rows = q.jobs("story", state="running").to_pandas()
        assert list(no_rows.columns) == list(frame.columns)
        for kwargs in RESULTS_ASKED:
            written = project.jq("results", "story", "--csv", *results_options(**kwargs), check=True).stdout
            mine = q.results("story", **kwargs).to_pandas()
            assert list(mine.columns) == next(csv.reader(io.StringIO(written)))
            pandas.testing.assert_frame_equal(mine, pandas.read_csv(io.StringIO(written)), check_dtype=False)


def test_open_queue_finds_the_db_as_jq_does_and_pandas_is_imported_by_to_pandas_alone(sqlite_project, monkeypatch):
    project = sqlite_project
    run_story(project)
    monkeypatch.chdir(project.path)
    monkeypatch.delenv("JQ_DB", raising=False)
    with jobqueue.open_queue() as q:  # ./jobqueue.db
        assert [r.name for r in q.runs()] == ["story"]
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("JQ_DB", project.db)
    with jobqueue.open_queue() as q:
        assert len(list(q.jobs("story"))) == 6
    with pytest.raises(UserError, match="no such database"):
        jobqueue.open_queue(str(project.path / "other.db"))

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys
        import jobqueue
        print("jobqueue.api" in sys.modules)
        q = jobqueue.open_queue()
        for records in (q.runs(), q.jobs("story"), q.attempts(1), q.results("story", group_by="lr"), q.metrics(1)):
            list(records)
        print("pandas" in sys.modules)
        sys.modules["pandas"] = None  # as if it were not installed
        try:
            q.jobs("story").to_pandas()
        except jobqueue.errors.UserError as exc:
            print(exc)
    """),
        ],
        env=project.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["False", "False", "to_pandas() needs pandas: pip install 'jobqueue[pandas]'"]
