"""Results: jobs' metrics read from JSON lines and TensorBoard event files, stored on both databases, compared."""

import functools
import io
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.proto.tensor_pb2 import TensorProto

from jobqueue import layout, queue, results
from jobqueue.db import open_db
from jobqueue.metrics import (
    JSONL,
    Point,
    find_event_files,
    job_sources,
    metrics_file_for,
    read_event_file,
    read_jsonl,
)
from jobqueue.states import AttemptState
from jobqueue.sweep import JobSpec
from tests.conftest import REPO

NAN, INF = float("nan"), float("inf")


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- reading JSON lines ---------------------------------------------------------------------------


def test_json_lines_keep_nan_and_infinities_and_skip_and_count_every_bad_line(tmp_path):
    path = tmp_path / "m.jsonl"
    good = [
        '{"step": 1, "reward": 1.5, "loss": NaN, "wall_time": 100.0}',
        '{"step": 2, "reward": Infinity, "loss": -Infinity, "wall_time": 101}',
        '{"reward": 7, "wall_time": 102.5}',  # no step
        "",  # blank: nothing, and not bad
        '{"step": 3}',  # a step alone: no points, not bad
    ]
    bad = [
        "not json",
        "[1, 2]",
        '{"step": 4, "reward": "high"}',
        '{"step": 5, "done": true}',
        '{"step": 1.5, "reward": 1}',
        '{"step": 6, "' + "k" * 201 + '": 1}',
        '{"step": 7, "wall_time": "noon", "reward": 1}',
        '{"step": 8, "big": ' + "9" * 400 + "}",
        "\xff\xfe garbage",
    ]
    path.write_bytes(("\n".join(good[:2] + bad + good[2:]) + "\n").encode("utf-8", "surrogateescape"))
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"step": 9, "reward": 3')  # a line still being written
    (chunk,) = read_jsonl(str(path))
    assert chunk.skipped == len(bad) and (chunk.start, chunk.end) == (0, whole)
    assert same(
        chunk.points,
        [
            Point("reward", 1, 1.5, 100.0),
            Point("loss", 1, NAN, 100.0),
            Point("reward", 2, INF, 101.0),
            Point("loss", 2, -INF, 101.0),
            Point("reward", None, 7.0, 102.5),
        ],
    )
    with open(path, "ab") as f:
        f.write(b'.5, "k' + b"k" * 199 + b'": 2}\n')  # finished: a key of 200 characters is taken
    (rest,) = read_jsonl(str(path), chunk.end)
    assert rest.skipped == 0 and rest.end == path.stat().st_size
    assert [(p.key, p.step, p.value) for p in rest.points] == [("reward", 9, 3.5), ("k" * 200, 9, 2.0)]
    assert list(read_jsonl(str(path), rest.end)) == []


def test_a_json_lines_file_is_read_in_chunks_that_meet_end_to_start(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": i, "a": i, "b": -i}) + "\n" for i in range(1000)))
    chunks = list(read_jsonl(str(path), chunk_points=300))
    assert [len(c.points) for c in chunks] == [300, 300, 300, 300, 300, 300, 200]
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]] and chunks[-1].end == path.stat().st_size
    assert [p.step for c in chunks for p in c.points if p.key == "a"] == list(range(1000))


def test_a_line_too_long_to_hold_is_skipped_and_counted_once(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": [' + "1," * 600_000 + '1]}\n{"a": 2}\n')
    (chunk,) = read_jsonl(str(path))
    assert [p.value for p in chunk.points] == [1.0, 2.0] and chunk.skipped == 1 and chunk.end == path.stat().st_size


# --- reading TensorBoard event files --------------------------------------------------------------


def write_events(directory, scalars: dict[str, list[tuple[int, float]]]) -> str:
    """Event files as a training script writes them, with tensorboardX's SummaryWriter; also a histogram and a
    text (not scalars), and one TF2-style scalar tensor. The file's path."""
    import numpy as np

    writer = SummaryWriter(str(directory))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step, walltime=1000.0 + step)
    writer.add_histogram("weights", np.arange(10.0), 3)
    writer.add_text("note", "a string tensor, not a number", 3)
    tensor = TensorProto(dtype=2, double_val=[0.125])  # DT_DOUBLE, shape []
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="tf2/double", tensor=tensor)]), 5, walltime=1005.0)
    writer.close()
    (path,) = directory.glob("events.out.tfevents.*")
    return str(path)


def test_event_files_from_summary_writer_give_their_scalars_and_a_truncated_one_waits_for_its_last_record(tmp_path):
    experiment = tmp_path / "train_dir" / "exp"
    path = write_events(
        experiment / ".summary" / "0", {"reward/reward": [(0, 0.3), (100, 12.5), (200, NAN)], "perf/_fps": [(100, INF)]}
    )
    (experiment / "checkpoint_p0").mkdir()
    assert find_event_files(str(experiment)) == [path]
    (chunk,) = read_event_file(path)
    assert chunk.skipped == 0 and chunk.end == os.path.getsize(path)
    assert same(
        chunk.points,
        [
            Point("reward/reward", 0, 0.3, 1000.0),
            Point("reward/reward", 100, 12.5, 1100.0),
            Point("reward/reward", 200, NAN, 1200.0),
            Point("perf/_fps", 100, INF, 1100.0),
            Point("tf2/double", 5, 0.125, 1005.0),
        ],
    )
    # A job killed mid-write: the file ends inside its last record, which the next read takes whole.
    data = Path(path).read_bytes()
    cut = tmp_path / "cut" / os.path.basename(path)
    cut.parent.mkdir()
    cut.write_bytes(data[:-7])
    (before,) = read_event_file(str(cut))
    assert same(before.points, chunk.points[:-1]) and before.skipped == 0 and before.end < len(data) - 7
    with open(cut, "ab") as f:
        f.write(data[-7:])
    (after,) = read_event_file(str(cut), before.end)
    assert same(after.points, chunk.points[-1:]) and after.end == len(data)


def test_a_damaged_event_record_is_skipped_and_counted(tmp_path):
    path = write_events(tmp_path, {"a": [(i, float(i)) for i in range(5)]})
    data = bytearray(Path(path).read_bytes())
    # Records follow one another as 12-byte head, data, 4-byte checksum: flip a byte in the data of the third scalar.
    offset, records = 0, []
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        records.append(offset)
        offset += 12 + length + 4
    data[records[3] + 12 + 2] ^= 0xFF  # record 0 is the file version, then one record per scalar
    Path(path).write_bytes(bytes(data))
    (damaged,) = read_event_file(path)
    assert damaged.skipped == 1 and damaged.end == len(data)
    assert [p.step for p in damaged.points if p.key == "a"] == [0, 1, 3, 4]


def test_event_files_without_tensorboardx_are_reported_in_one_line(tmp_path):
    write_events(tmp_path / "exp" / ".summary" / "0", {"a": [(1, 1.0)]})
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n')
    blocker = tmp_path / "blocker"
    (blocker / "tensorboardX").mkdir(parents=True)
    (blocker / "tensorboardX" / "__init__.py").write_text("raise ImportError('No module named tensorboardX')\n")
    code = (
        "import sys; from jobqueue.metrics import job_sources\n"
        "sources, message = job_sources({}, 1, sys.argv[1], sys.argv[2])\n"
        "print([s.kind for s in sources]); print(message)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "exp"), str(tmp_path / "m.jsonl")],
        env={**os.environ, "PYTHONPATH": f"{blocker}:{REPO}"},
        capture_output=True,
        text=True,
    )
    kinds, message = proc.stdout.splitlines()
    assert proc.returncode == 0 and kinds == "['jsonl']", proc.stderr
    assert message.startswith(f"jq: TensorBoard event files below {tmp_path / 'exp'} are not read")
    assert "pip install 'jobqueue[tensorboard]'" in message
    sources, message = job_sources({}, 1, str(tmp_path / "exp"), str(tmp_path / "m.jsonl"))
    assert sorted(s.kind for s in sources) == ["jsonl", "tfevents"] and message is None


# --- log_metrics -----------------------------------------------------------------------------------


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "JQ_METRICS_FILE"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**environ, **env}, capture_output=True, text=True, cwd=REPO
    )


def test_log_metrics_appends_lines_the_reader_takes_and_its_import_costs_nothing(tmp_path):
    path = tmp_path / "job.metrics.jsonl"
    proc = run_python(
        """
        import sys
        before = set(sys.modules)
        from jobqueue import log_metrics
        print(sorted(set(sys.modules) - before))
        log_metrics(step=1, reward=1.5, loss=float("nan"))
        log_metrics(reward=float("inf"), episodes=3)
        for bad in ({"step": 1.5, "a": 1}, {"a": "x"}, {"k" * 201: 1}):
            try:
                log_metrics(**bad)
            except (TypeError, ValueError) as exc:
                print(type(exc).__name__)
    """,
        JQ_METRICS_FILE=str(path),
    )
    assert proc.returncode == 0, proc.stderr
    imported, *errors = proc.stdout.splitlines()
    assert imported == "['jobqueue', 'jobqueue.training']" and errors == ["TypeError", "TypeError", "ValueError"]
    (chunk,) = read_jsonl(str(path))
    assert chunk.skipped == 0
    assert same(
        [(p.key, p.step, p.value) for p in chunk.points],
        [("reward", 1, 1.5), ("loss", 1, NAN), ("reward", None, INF), ("episodes", None, 3.0)],
    )
    assert all(abs(p.wall_time - chunk.points[0].wall_time) < 60 for p in chunk.points)
    unset = run_python("from jobqueue import log_metrics\nlog_metrics(a=1)\nlog_metrics(a=2)")
    assert unset.returncode == 0 and unset.stderr.count("JQ_METRICS_FILE is not set") == 1


# --- storing and comparing, on both databases ------------------------------------------------------


class Sweep:
    """A run's jobs in a real DB, claimed and finished as a worker would, with each attempt's metrics file."""

    def __init__(self, db, tmp_path, params: list[dict], name: str = "sweep"):
        self.db, self.dir = db, tmp_path
        specs = [
            JobSpec(f"{i:02d}_j", "j", p, ["true"], "true", f"{name}/j_", str(tmp_path / name), index=i)
            for i, p in enumerate(params)
        ]
        self.run_id = queue.enqueue(db, name, specs, sweep=name, train_dir=str(tmp_path), cwd=str(tmp_path)).run_id
        self.worker = queue.register_worker(db, slots=1, gpus=None, backend="processes", run_id=None)
        self.ids = [j["id"] for j in queue.list_jobs(db, name, columns="jobs.id")]

    def attempt(
        self, index: int, lines: list[dict] | str, outcome=AttemptState.SUCCEEDED, halfway=None
    ) -> queue.ClaimedJob:
        """Run one attempt of a job that logs `lines` to its metrics file, collected while it runs (then halfway()
        is called) and at its end."""
        job = queue.claim_next_job(self.db, self.worker, slot=0, gpus=None, job_id=self.ids[index])
        metrics_file = metrics_file_for(job.log_path)
        os.makedirs(os.path.dirname(metrics_file), exist_ok=True)
        text = lines if isinstance(lines, str) else "".join(json.dumps(line) + "\n" for line in lines)
        half = len(text) // 2
        with open(metrics_file, "w") as f:
            f.write(text[:half])
        self.collect(job)
        if halfway:
            halfway()
        with open(metrics_file, "a") as f:
            f.write(text[half:])
        self.collect(job)
        queue.finish_attempt(self.db, job, self.worker.id, outcome, exit_code=0)
        return job

    def collect(self, job) -> results.Collected:
        return results.collect(
            self.db,
            job.job_id,
            job.attempt_id,
            experiment_dir=str(self.dir / "sweep" / job.name),
            metrics_file=metrics_file_for(job.log_path),
        )


def test_a_resumed_job_keeps_both_attempts_points_and_its_summary_spans_them(project, tmp_path):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1}])
    first = [{"step": s, "reward": float(s), "loss": 1 / (s + 1)} for s in range(0, 90, 10)]
    first[3]["reward"] = NAN
    sweep.attempt(0, first + ["garbage"], outcome=AttemptState.INTERRUPTED)
    # The second attempt resumes from a checkpoint at step 50 and logs those steps again, to 100.
    second = [{"step": s, "reward": s + 0.5, "loss": -INF if s == 60 else 0.01} for s in range(50, 110, 10)]

    def halfway():  # the second attempt is back at steps before the first one's last: the last value stays
        (row,) = results.results(db, "sweep", metrics=["reward"])
        assert row["metrics"]["reward"]["last_step"] == 80 and row["metrics"]["reward"]["last"] == 80.0

    job = sweep.attempt(0, [{"x": 1}] + second, halfway=halfway)
    assert sweep.collect(job).points == 0  # nothing new: read once only
    (row,) = results.results(db, "sweep")
    assert row["params"] == {"lr": 0.1} and row["state"] == "succeeded" and row["duration_s"] >= 0
    assert same(
        row["metrics"],
        {
            "reward": {"last": 100.5, "last_step": 100, "min": 0.0, "max": 100.5, "count": 15},
            "loss": {"last": 0.01, "last_step": 100, "min": -INF, "max": 1.0, "count": 15},
            "x": {"last": 1.0, "last_step": None, "min": 1.0, "max": 1.0, "count": 1},
        },
    )
    points = list(results.metrics(db, job.job_id, ["reward"]))
    assert [(p["attempt"], p["step"]) for p in points] == [(1, s) for s in range(0, 90, 10)] + [
        (2, s) for s in range(50, 110, 10)
    ]
    assert math.isnan(points[3]["value"]) and points[-1]["value"] == 100.5
    sources = results.metric_sources(db, job.job_id)
    assert [(s["attempt"], s["kind"], s["points"], s["skipped"]) for s in sources] == [
        (1, JSONL, 18, 1),
        (2, JSONL, 13, 0),
    ]
    assert results.source_lines(sources) == [
        f"attempt 1: 18 points from {sources[0]['path']}, 1 bad line skipped",
        f"attempt 2: 13 points from {sources[1]['path']}",
    ]
    assert results.best_line("sweep", results.run_best(db, "sweep")).endswith(
        "100.5 at step 100; 1 bad metric line or record skipped"
    )
    assert results.job_metric_keys(db, job.job_id) == ["reward", "loss", "x"]


def test_a_reader_that_lost_the_race_for_a_range_stores_nothing_twice(project, tmp_path):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{}])
    job = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "a": 1}\n')
    # Two readers (say, a worker declared lost but still running, and the new one) read the file from the same offset.
    (chunk,) = read_jsonl(str(path))
    assert db.transact(lambda tx: results.ingest(tx, job.job_id, job.attempt_id, chunk)) is True
    assert db.transact(lambda tx: results.ingest(tx, job.job_id, job.attempt_id, chunk)) is False
    assert [r["metrics"]["a"]["count"] for r in results.results(db, "sweep")] == [1]


def test_the_last_value_is_the_highest_steps_whatever_the_order_and_the_chunks_the_points_came_in(project, tmp_path):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{}, {}])
    lines = [{"b": 1.0}, {"step": 5, "a": 5.0}, {"b": 2.0}, {"step": 3, "a": 3.0}, {"a": 9.0}, {"step": 4, "a": 4.0}]
    sweep.attempt(0, lines)
    job = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    path = tmp_path / "one-point-a-chunk.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for chunk in read_jsonl(str(path), chunk_points=1):
        db.transact(functools.partial(results.ingest, job_id=job.job_id, attempt_id=job.attempt_id, chunk=chunk))
    for row in results.results(db, "sweep"):
        assert row["metrics"] == {
            "a": {"last": 5.0, "last_step": 5, "min": 3.0, "max": 9.0, "count": 4},
            "b": {"last": 2.0, "last_step": None, "min": 1.0, "max": 2.0, "count": 2},
        }


def test_results_sort_best_first_with_nan_last_and_group_over_seeds(project, tmp_path):
    db = open_db(project.db)
    params = [{"lr": lr, "seed": seed} for lr in (0.1, 0.01) for seed in (1, 2, 3)]
    sweep = Sweep(db, tmp_path, params)
    finals = {0: 10.0, 1: 12.0, 2: NAN, 3: 20.0, 4: 24.0, 5: 22.0}  # lr 0.1: one seed diverged
    for i, final in finals.items():
        sweep.attempt(i, [{"step": 1, "reward": 0.0, "loss": 5.0}, {"step": 2, "reward": final, "loss": 1.0 / (i + 1)}])
    ranked = list(results.results(db, "sweep", sort="reward"))
    assert [r["id"] for r in ranked] == [sweep.ids[i] for i in (4, 5, 3, 1, 0, 2)]
    assert math.isnan(ranked[-1]["metrics"]["reward"]["last"]) and ranked[-1]["metrics"]["reward"]["max"] == 0.0
    by_loss = list(results.results(db, "sweep", sort="loss", minimize=True, metrics=["loss"]))
    assert [r["id"] for r in by_loss] == [sweep.ids[i] for i in (5, 4, 3, 2, 1, 0)]
    assert all(list(r["metrics"]) == ["loss"] for r in by_loss)
    groups = list(results.results(db, "sweep", sort="reward", group_by=["lr"]))
    assert [(g["group"], g["jobs"]) for g in groups] == [({"lr": 0.01}, 3), ({"lr": 0.1}, 3)]
    assert same(groups[0]["metrics"]["reward"], {"mean": 22.0, "std": 2.0, "min": 20.0, "max": 24.0})
    assert same(groups[1]["metrics"]["reward"], {"mean": 11.0, "std": math.sqrt(2), "min": 10.0, "max": 12.0})
    per_run = list(results.results(db, "sweep", group_by=["lr", "seed"]))
    assert (
        len(per_run) == 6
        and all(g["jobs"] == 1 for g in per_run)
        and math.isnan(per_run[0]["metrics"]["reward"]["std"])
    )
    best = results.run_best(db, "sweep")
    assert best == {
        "key": "reward",
        "minimize": False,
        "job": {"id": sweep.ids[4], "name": "04_j", "last": 24.0, "last_step": 2},
        "skipped": 0,
    }
    assert results.best_line("sweep", best) == f"sweep: best on reward so far: job {sweep.ids[4]} 04_j, 24 at step 2"
    lowest = results.run_best(db, "sweep", "loss", minimize=True)
    assert (
        results.best_line("sweep", lowest)
        == f"sweep: best on loss (lowest) so far: job {sweep.ids[5]} 05_j, 0.166667 at step 2"
    )
    for call, message in [
        (lambda: results.results(db, "sweep", sort="acc"), "--sort acc: no job of run 'sweep' has logged this metric"),
        (
            lambda: results.results(db, "sweep", group_by=["batch"]),
            "--group-by batch: no job of run 'sweep' has this parameter",
        ),
        (lambda: results.results(db, "nope"), "no run named 'nope'"),
        (lambda: results.metrics(db, 999), "no job with id 999"),
    ]:
        with pytest.raises(results.UserError, match=message):
            list(call())


def test_results_as_json_csv_and_table(project, tmp_path):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1, "arch": [64, 64]}, {"lr": 0.2, "arch": [32]}])
    sweep.attempt(0, [{"step": 5, "reward": 1.25, "loss": NAN}])
    sweep.attempt(1, [{"step": 5, "reward": INF, "loss": 0.5}])
    out = io.StringIO()
    results.write_json(results.results(db, "sweep", sort="reward"), out)
    rows = json.loads(out.getvalue())
    assert [r["id"] for r in rows] == [sweep.ids[1], sweep.ids[0]]
    assert set(rows[0]) == {"id", "name", "state", "params", "duration_s", "metrics"}
    assert rows[0]["metrics"]["reward"] == {
        "last": "Infinity",
        "last_step": 5,
        "min": "Infinity",
        "max": "Infinity",
        "count": 1,
    }
    assert rows[1]["metrics"]["loss"] == {"last": "NaN", "last_step": 5, "min": "NaN", "max": "NaN", "count": 1}
    columns = results.result_columns(db, "sweep")
    assert (columns.params, columns.metrics) == (["lr", "arch"], ["reward", "loss"])
    out = io.StringIO()
    results.write_jobs_csv(results.job_pages(db, "sweep", columns.metrics), out, columns)
    lines = out.getvalue().splitlines()
    assert lines[0] == "id,name,state,lr,arch,duration_s,reward,loss"
    assert lines[1].startswith(f'{sweep.ids[0]},00_j,succeeded,0.1,"[64, 64]",') and lines[1].endswith(",1.25,NaN")
    assert lines[2].endswith(",Infinity,0.5")
    out = io.StringIO()
    results.write_jobs_table(results.job_pages(db, "sweep", columns.metrics, sort="loss", minimize=True), out, columns)
    table = out.getvalue().splitlines()
    assert table[0].split() == ["id", "name", "state", "lr", "arch", "duration_s", "reward", "loss"]
    assert table[1].split()[-2:] == ["Infinity", "0.5"] and table[2].split()[-2:] == ["1.25", "NaN"]
    out = io.StringIO()
    results.write_json(results.results(db, "sweep", group_by=["lr"]), out)
    assert json.loads(out.getvalue())[0] == {
        "group": {"lr": 0.1},
        "jobs": 1,
        "metrics": {"reward": {"mean": 1.25, "std": "NaN", "min": 1.25, "max": 1.25}},
    }
    out = io.StringIO()
    results.write_points_csv(results.metrics(db, sweep.ids[0]), out)
    assert out.getvalue().splitlines()[0] == "attempt,key,step,value,wall_time"
    assert [line.split(",")[:4] for line in out.getvalue().splitlines()[1:]] == [
        ["1", "loss", "5", "NaN"],
        ["1", "reward", "5", "1.25"],
    ]
    lines = list(results.points_table(results.metrics(db, sweep.ids[0]), ["reward", "loss"]))
    assert [line.split() for line in lines] == [
        ["attempt", "key", "step", "value"],
        ["1", "loss", "5", "NaN"],
        ["1", "reward", "5", "1.25"],
    ]


def test_groups_are_summed_up_by_the_database_infinities_nan_and_odd_parameters_included(project, tmp_path):
    db = open_db(project.db)
    params = [
        {"opt.lr": 0.1, "arch": [64, 64]},
        {"opt.lr": 0.1, "arch": [64, 64]},
        {"opt.lr": 0.1, "arch": [32]},
        {"opt.lr": 0.2, "arch": [32]},
        {"arch": [32]},  # a job without the parameter groups with those whose value is null
    ]
    sweep = Sweep(db, tmp_path, params)
    finals = [{"reward": INF, "loss": 1.0}, {"reward": 2.0, "loss": 3.0}, {"reward": -INF, "loss": NAN}]
    finals += [{"reward": NAN, "loss": 0.5}, {"reward": 1.0}]
    for i, final in enumerate(finals):
        sweep.attempt(i, [{"step": 1, **final}])
    by_lr = list(results.results(db, "sweep", group_by=["opt.lr"]))
    assert [(g["group"], g["jobs"]) for g in by_lr] == [
        ({"opt.lr": 0.1}, 3),
        ({"opt.lr": 0.2}, 1),
        ({"opt.lr": None}, 1),
    ]
    assert same(
        by_lr[0]["metrics"],
        {
            "reward": {"mean": NAN, "std": NAN, "min": -INF, "max": INF},  # both infinities: no mean
            "loss": {"mean": 2.0, "std": math.sqrt(2), "min": 1.0, "max": 3.0},  # the NaN left out
        },
    )
    assert same(by_lr[1]["metrics"], {"loss": {"mean": 0.5, "std": NAN, "min": 0.5, "max": 0.5}})  # no reward number
    assert same(by_lr[2]["metrics"], {"reward": {"mean": 1.0, "std": NAN, "min": 1.0, "max": 1.0}})
    by_arch = list(results.results(db, "sweep", sort="reward", group_by=["arch"]))
    assert [(g["group"], g["jobs"]) for g in by_arch] == [({"arch": [64, 64]}, 2), ({"arch": [32]}, 3)]
    assert same(by_arch[0]["metrics"]["reward"], {"mean": INF, "std": NAN, "min": 2.0, "max": INF})


def test_a_results_table_longer_than_a_page_is_written_a_page_at_a_time_with_every_parameter(
    project, tmp_path, monkeypatch
):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}, {"lr": 0.4, "batch": 64}, {"lr": 0.5}])
    for i, reward in enumerate([1.0, 2.5, 1 / 3, 1e-7 / 3, 12345.678]):
        sweep.attempt(i, [{"step": 1, "reward": reward, "loss": 0.5}])

    def table() -> list[str]:
        out = io.StringIO()
        columns = results.result_columns(db, "sweep", params=False)
        pages = results.job_pages(db, "sweep", columns.metrics, sort="reward")
        results.write_jobs_table(pages, out, columns, run_params=lambda: results.result_columns(db, "sweep").params)
        return out.getvalue().splitlines()

    def last_column_starts(lines: list[str]) -> list[int]:
        return [line.rstrip().rindex(" ") for line in lines]

    whole = table()
    assert [line.split()[0] for line in whole[1:]] == [str(sweep.ids[i]) for i in (4, 1, 0, 2, 3)]
    assert len(set(last_column_starts(whole))) == 1
    monkeypatch.setattr(layout, "ALIGN_ROWS", 2)
    paged = table()
    # The header comes with the first page, yet names the parameter only the last page's job has.
    assert paged[0].split() == ["id", "name", "state", "lr", "batch", "duration_s", "reward", "loss"]
    assert [line.split()[0] for line in paged[1:]] == [str(sweep.ids[i]) for i in (4, 1, 0, 2, 3)]
    assert paged[5].split()[3:5] == ["0.4", "64"] and paged[5].split()[-2:] == ["3.33333e-08", "0.5"]
    # Each page is laid out as it comes: the reward column widens for a later page's wider value, never narrows.
    starts = last_column_starts(paged)
    assert starts[0] == starts[1] == starts[2] < starts[3] == starts[4] < starts[5]


def test_event_files_below_the_experiment_dir_are_ingested_per_attempt(project, tmp_path):
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1}])
    events = tmp_path / "sweep" / "00_j" / ".summary" / "0"
    job = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    write_events(events, {"reward/reward": [(100, 1.0), (200, 2.0)]})
    assert sweep.collect(job).points == 3  # two rewards and the TF2 scalar; nothing of the histogram or text
    queue.finish_attempt(db, job, sweep.worker.id, AttemptState.INTERRUPTED)
    job = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    (events / "second").mkdir()
    write_events(events / "second", {"reward/reward": [(200, 2.5), (300, 3.0)]})
    assert sweep.collect(job).points == 3  # the new file only
    (row,) = results.results(db, "sweep", metrics=["reward/reward"])
    assert row["metrics"]["reward/reward"] == {"last": 3.0, "last_step": 300, "min": 1.0, "max": 3.0, "count": 4}
    assert [(p["attempt"], p["step"], p["value"]) for p in results.metrics(db, job.job_id, ["reward/reward"])] == [
        (1, 100, 1.0),
        (1, 200, 2.0),
        (2, 200, 2.5),
        (2, 300, 3.0),
    ]


def test_an_orphaned_attempts_event_file_read_only_by_the_next_attempt_stays_its_own(project, tmp_path):
    """A worker killed outright never read its attempt's event file; the attempt that runs the job next finds it,
    and gives it to the attempt that was running when the file was opened."""
    db = open_db(project.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1}])
    events = tmp_path / "sweep" / "00_j" / ".summary" / "0"
    first = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    write_events(events, {"reward/reward": [(100, 1.0), (200, 2.0)]})
    opened = time.time()
    queue.finish_attempt(db, first, sweep.worker.id, AttemptState.INTERRUPTED)
    while time.time() < int(opened) + 2:  # the file's name has whole seconds
        time.sleep(0.1)
    second = queue.claim_next_job(db, sweep.worker, slot=0, gpus=None)
    (events / "second").mkdir()
    write_events(events / "second", {"reward/reward": [(200, 2.5), (300, 3.0)]})
    assert sweep.collect(second).points == 6
    points = results.metrics(db, second.job_id, ["reward/reward"])
    assert [(p["attempt"], p["step"], p["value"]) for p in points] == [
        (1, 100, 1.0),
        (1, 200, 2.0),
        (2, 200, 2.5),
        (2, 300, 3.0),
    ]


def test_jq_db_copy_carries_the_metrics_both_ways(sqlite_project, postgres_server, tmp_path):
    p = sqlite_project
    db = open_db(p.db)
    sweep = Sweep(db, tmp_path, [{"lr": 0.1}, {"lr": 0.2}])
    sweep.attempt(0, [{"step": 1, "reward": NAN, "loss": INF}, "bad"])
    sweep.attempt(1, [{"step": 1, "reward": 2.0, "loss": -INF}])
    before = list(results.results(db, "sweep"))
    points = json.dumps(list(results.metrics(db, sweep.ids[0])))
    pg = postgres_server.create_database("jq_metrics_copy")
    out = p.jq("db", "copy", p.db, pg, check=True).stdout
    assert "4 metric_summaries, 4 metric_points, 2 metric_sources" in out
    back = str(tmp_path / "back.db")
    p.jq("db", "copy", pg, back, check=True)
    for url in (pg, back):
        copied = open_db(url)
        after = list(results.results(copied, "sweep"))
        # Durations are worked out by each database's clock arithmetic, SQLite's to the millisecond.
        assert [abs(a.pop("duration_s") - b["duration_s"]) < 0.002 for a, b in zip(after, before)] == [True, True]
        assert same(after, [{k: v for k, v in b.items() if k != "duration_s"} for b in before]), url
        assert json.dumps(list(results.metrics(copied, sweep.ids[0]))) == points, url
        assert [s["skipped"] for s in results.metric_sources(copied, sweep.ids[0])] == [1]


# --- streaming ----------------------------------------------------------------------------------------

MEASURE_RSS = """
import json, resource, sys
from jobqueue import queue, results
from jobqueue.db import open_db
from jobqueue.metrics import read_jsonl

path, db_path, what = sys.argv[1:]
if what == "read":
    def measure(file):
        return sum(len(chunk.points) for chunk in read_jsonl(file))
else:
    db = open_db(db_path)
    worker = queue.register_worker(db, slots=1, gpus=None, backend="processes", run_id=None)
    job = queue.claim_next_job(db, worker, slot=0, gpus=None)
    def measure(file):
        return results.collect(db, job.job_id, job.attempt_id, experiment_dir=None, metrics_file=file).points
measure(path + ".warm-up")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
points = measure(path)
print(json.dumps({"points": points, "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def test_reading_and_storing_a_large_metrics_file_keeps_memory_flat(tmp_path):
    path = tmp_path / "big.metrics.jsonl"
    warm = tmp_path / "big.metrics.jsonl.warm-up"  # a small file first: the first chunk's allocations are not growth
    warm.write_text(
        "".join(json.dumps({"step": i, "reward": i * 0.5, "loss": 1.0 / (i + 1)}) + "\n" for i in range(20_000))
    )
    with open(path, "w") as f:
        f.writelines(json.dumps({"step": i, "reward": i * 0.5, "loss": 1.0 / (i + 1)}) + "\n" for i in range(100_000))
    db = tmp_path / "jobqueue.db"
    enqueue = open_db(str(db))
    queue.enqueue(
        enqueue,
        "big",
        [JobSpec("00_j", "j", {}, ["true"], "true", "big/j_", str(tmp_path))],
        sweep="big",
        train_dir=str(tmp_path),
        cwd=str(tmp_path),
    )
    for what in ("read", "store"):
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE_RSS, str(path), str(db), what], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr
        measured = json.loads(proc.stdout)
        # The reader holds one chunk of points at a time, whose like the warm-up already held: the peak stays put.
        assert measured["points"] == 200_000 and measured["grew_kb"] < 5_000, (what, measured)


def test_a_db_made_before_metrics_is_upgraded_on_open_and_keeps_its_jobs(db_url, tmp_path):
    from alembic import command

    from jobqueue.db import Database, _alembic_config, _open_postgres, close_all

    url = db_url(tmp_path)
    old = Database(url=f"sqlite:///{url}", path=tmp_path / "jobqueue.db") if "://" not in url else _open_postgres(url)
    config = _alembic_config()
    config.attributes["engine"] = old.engine
    command.upgrade(config, "0001")
    queue.enqueue(
        old,
        "old",
        [JobSpec("00_j", "j", {"lr": 1}, ["true"], "true", "old/j_", str(tmp_path))],
        sweep="old",
        train_dir=str(tmp_path),
        cwd=str(tmp_path),
    )
    old.dispose()
    sweep_db = open_db(url)
    job = queue.claim_next_job(
        sweep_db,
        queue.register_worker(sweep_db, slots=1, gpus=None, backend="processes", run_id=None),
        slot=0,
        gpus=None,
    )
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "a": 2.5}\n')
    results.collect(sweep_db, job.job_id, job.attempt_id, experiment_dir=None, metrics_file=str(path))
    (row,) = results.results(sweep_db, "old")
    assert row["params"] == {"lr": 1} and row["metrics"]["a"]["last"] == 2.5
    close_all()
