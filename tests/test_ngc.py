"""The NGC backend, with a fake `ngc` first on PATH (NGC's cloud cannot run here) that records its exact argv."""

import itertools
import json
import os
import shlex
import sqlite3
from pathlib import Path

import pytest

from jobqueue import queue
from jobqueue.backends import ngc
from jobqueue.db import open_db
from jobqueue.settings import LaunchSettings, NgcSettings
from jobqueue.sweep import Experiment, ParamGrid, RunDescription, expand
from tests.conftest import refused as assert_refused

FAKE_NGC = Path(__file__).parent / "fake_ngc"
NASTY = """it's "quoted" $HOME; rm -rf / & `id`"""
TEMPLATE = """\
# one NGC job per experiment
ngc batch run \\
  --name "{{ name }}" --image "nvidia/pytorch:23.10-py3" --instance dgx1v.16g.1.norm \\
  --result /result --total-runtime 72h --ace nv-us-west-2 \\
  --commandline "cd /workspace/project && {{ experiment_cmd }}"
"""


_paged_dbs = itertools.count()


@pytest.fixture
def ngc_project(sqlite_project):
    p = sqlite_project
    log = p.path / "ngc_calls.jsonl"
    base_env = p.env

    def env(**extra):
        merged = base_env(FAKE_NGC_LOG=str(log), **extra)
        merged["PATH"] = f"{FAKE_NGC}{os.pathsep}{merged['PATH']}"
        return merged

    p.env = env
    p.calls = lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    p.write("ngc.template", TEMPLATE)
    p.write(
        "nasty.py",
        f"""
        from jobqueue import Experiment, ParamList, RunDescription
        RUN_DESCRIPTION = RunDescription("nasty", experiments=[
            Experiment("exp", "python train.py --algo=APPO",
                       ParamList([{{"msg": {NASTY!r}}}, {{"msg": "plain"}}, {{"msg": "semi;colon"}}]).generate_params(randomize=False)),
        ])
    """,
    )
    return p


def test_each_experiment_is_one_ngc_job_with_its_command_intact_and_ids_recorded(ngc_project):
    p = ngc_project
    proc = p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--max-parallel", "2")
    assert proc.returncode == 0, proc.stderr
    calls = sorted(p.calls(), key=lambda argv: argv[argv.index("--name") + 1])
    jobs = p.jobs()
    assert len(calls) == 3
    for argv, job in zip(calls, jobs):
        assert argv == [
            "batch",
            "run",
            "--name",
            job["name"],
            "--image",
            "nvidia/pytorch:23.10-py3",
            "--instance",
            "dgx1v.16g.1.norm",
            "--result",
            "/result",
            "--total-runtime",
            "72h",
            "--ace",
            "nv-us-west-2",
            "--commandline",
            f"cd /workspace/project && {job['cmd']}",
            "--format_type",
            "json",
        ]
        # The shell NGC runs the command in gets exactly the job's argv back.
        assert shlex.split(argv[argv.index("--commandline") + 1])[3:] == job["argv"]
    assert f"--msg={NASTY}" in shlex.split(calls[0][calls[0].index("--commandline") + 1])
    subs = p.sql("select job_id, external_id, state, mode from submissions order by external_id")
    assert sorted(s["external_id"] for s in subs) == ["1234567", "1234568", "1234569"]
    assert {s["state"] for s in subs} == {"submitted"} and {s["mode"] for s in subs} == {"per-job"}
    status = p.jq("status", "nasty", check=True).stdout
    assert "records submissions, not execution" in status
    again = p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", check=True)
    assert "already submitted" in again.stdout and len(p.calls()) == 3  # idempotent: nothing submitted twice


def test_a_failing_submission_is_recorded_and_reported_and_the_others_go_on(ngc_project):
    p = ngc_project
    env = p.env(FAKE_NGC_FAIL_ON="semi")
    proc = p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", env=env)
    assert proc.returncode == 1
    assert "NGC submission of job 3 failed (exit 1): Url: 'https://api.ngc.nvidia.com" in proc.stderr
    assert "2 of 3 NGC jobs submitted" in proc.stdout
    subs = {s["job_id"]: s for s in p.sql("select job_id, state, stderr, exit_code from submissions")}
    assert subs[3]["state"] == "failed" and subs[3]["exit_code"] == 1 and "not reachable" in subs[3]["stderr"]
    assert {subs[1]["state"], subs[2]["state"]} == {"submitted"}


def test_cancel_kills_the_runs_ngc_jobs_and_refresh_reads_their_state(ngc_project):
    p = ngc_project
    p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", check=True)
    p.jq("status", "nasty", "--refresh", env=p.env(FAKE_NGC_STATUS="RUNNING"), check=True)
    assert {s["state"] for s in p.sql("select state from submissions")} == {"RUNNING"}
    infos = sorted(c for c in p.calls() if c[:2] == ["batch", "info"])
    assert infos == [["batch", "info", str(i), "--format_type", "json"] for i in (1234567, 1234568, 1234569)]
    out = p.jq("cancel", "nasty", check=True).stdout
    (kill,) = [c for c in p.calls() if c[:2] == ["batch", "kill"]]
    assert kill[:2] == ["batch", "kill"] and sorted(kill[2].split(",")) == ["1234567", "1234568", "1234569"]
    assert f"ngc batch kill {kill[2]}" in out
    assert {s["state"] for s in p.sql("select state from submissions")} == {"cancelled"}


def test_print_only_submits_nothing(ngc_project):
    p = ngc_project
    out = p.jq(
        "launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--ngc-print-only", check=True
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("ngc batch run")]
    assert len(lines) == 3 and p.calls() == []
    assert shlex.split(lines[0])[-3] == "cd /workspace/project && " + p.jobs()[0]["cmd"]


def test_workers_mode_runs_workers_against_postgresql_and_refuses_sqlite(ngc_project, postgres_server):
    p = ngc_project
    refused = p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--ngc-workers", "2")
    assert_refused(refused, "--ngc-workers needs a DB that NGC jobs can reach")
    assert not (p.path / "jobqueue.db").exists() and p.calls() == []
    url = postgres_server.create_database("jq_ngc_workers")
    p.jq(
        "launch",
        "nasty",
        "--backend",
        "ngc",
        "--ngc-job-template",
        "ngc.template",
        "--ngc-workers",
        "2",
        "--slots",
        "3",
        "--db",
        url,
        check=True,
    )
    calls = p.calls()
    assert len(calls) == 2
    cmd = shlex.split(calls[0][calls[0].index("--commandline") + 1])
    assert cmd[3:] == [
        "python",
        "-m",
        "jobqueue",
        "worker",
        "--db",
        url,
        "--backend",
        "ngc",
        "--run",
        "nasty",
        "--slots",
        "3",
    ]
    # Per-job mode with a DB NGC can reach: each NGC job is a worker bound to its one job.
    p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--db", url, check=True)
    per_job = [c for c in p.calls()[2:]]
    bound = sorted(shlex.split(c[c.index("--commandline") + 1])[3:] for c in per_job)
    assert bound == [
        ["python", "-m", "jobqueue", "worker", "--db", url, "--backend", "ngc", "--job", str(i)] for i in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    "problem, template, message",
    [
        ("no template", None, "--backend ngc needs --ngc-job-template FILE"),
        (
            "no experiment_cmd",
            "ngc batch run --name {{ name }} --commandline 'echo hi'\n",
            "the template has no {{ experiment_cmd }}",
        ),
    ],
)
def test_template_errors_are_one_line_and_write_nothing(ngc_project, problem, template, message):
    p = ngc_project
    args = ["launch", "nasty", "--backend", "ngc"]
    if template is not None:
        p.write("bad.template", template)
        args += ["--ngc-job-template", "bad.template"]
    proc = p.jq(*args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (p.path / "jobqueue.db").exists() and p.calls() == []


def test_ngc_missing_from_path_is_a_clear_error(ngc_project):
    p = ngc_project
    env = p.env()
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d != str(FAKE_NGC))
    proc = p.jq("launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", env=env)
    assert_refused(proc, "ngc is not on PATH")
    assert not (p.path / "jobqueue.db").exists()


def test_generated_command_lines_parse_with_nvidias_own_ngc_parser(ngc_project, tmp_path):
    """ngcsdk 4.19.1 still ships the `ngc batch` argparse definitions: they check our argv offline."""
    import subprocess
    import sys

    from tests.conftest import service_unavailable

    try:
        import basecommand  # noqa: F401  (from ngcsdk==4.19.1, installed by .ci/run)
    except ImportError:
        service_unavailable("NVIDIA's ngc parser", 'pip install "ngcsdk==4.19.1" argcomplete')
    p = ngc_project
    out = p.jq(
        "launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template", "--ngc-print-only", check=True
    ).stdout
    lines = [shlex.split(line) for line in out.splitlines() if line.startswith("ngc batch run")]
    check = Path(__file__).parent / "ngc_parser" / "check_argv.py"
    env = dict(os.environ, HOME=str(tmp_path), NGC_CLI_API_KEY="dummy-key-for-parsing", NGC_CLI_TRACE_DISABLE="1")
    for argv in lines + [["ngc", "batch", "run", "--name", "x", "--bogus-flag"]]:
        proc = subprocess.run(
            [sys.executable, str(check), *argv[1:]], env=env, capture_output=True, text=True, timeout=60
        )
        if "--bogus-flag" in argv:
            assert proc.returncode == 2 and "unrecognized arguments: --bogus-flag" in proc.stderr  # the check can fail
        else:
            assert proc.returncode == 0 and "parsed" in proc.stdout, proc.stderr


# --- big runs, a page at a time: in-process, so that pages of a few jobs can stand for pages of a thousand ---------


@pytest.fixture
def paged(ngc_project, monkeypatch, request):
    """A run of 30 jobs, read 7 jobs or submissions at a time and killed 4 NGC ids at a time; in an SQLite file, or
    in PostgreSQL (param "postgres"), whose query for the jobs not yet submitted is another."""
    p = ngc_project
    if getattr(request, "param", "sqlite") == "postgres":
        name = f"jq_ngc_paged_{os.getpid()}_{next(_paged_dbs)}"  # a database for each test of this process
        p.db = request.getfixturevalue("postgres_server").create_database(name)
    for name, value in p.env().items():
        monkeypatch.setenv(name, value)  # the fake ngc first on PATH, and its log
    monkeypatch.setattr(ngc, "PAGE", 7)
    monkeypatch.setattr(ngc, "KILL_CHUNK", 4)
    p.names = [j.name for j in _thirty_jobs()]
    p.handle = open_db(p.db)
    queue.enqueue(p.handle, "big", _thirty_jobs(), sweep="s", train_dir="t")
    p.run = queue.get_run(p.handle, "big")
    p.settings = lambda **ngc_settings: LaunchSettings(
        backend="ngc", max_parallel=3, ngc=NgcSettings(job_template=str(p.path / "ngc.template"), **ngc_settings)
    )
    yield p
    p.handle.dispose()


def _thirty_jobs():
    return expand(
        RunDescription("big", [Experiment("j", "app", ParamGrid([("i", list(range(30)))]).generate_params())])
    )


def _names(calls: list[list[str]]) -> list[str]:
    return [argv[argv.index("--name") + 1] for argv in calls if argv[:2] == ["batch", "run"]]


@pytest.mark.parametrize("paged", ["sqlite", "postgres"], indirect=True)
def test_a_run_of_many_pages_is_submitted_job_by_job_in_order_and_never_twice(paged, capsys, monkeypatch):
    p = paged
    assert ngc.launch(p.handle, p.run, p.settings(print_only=True)) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [argv[argv.index("--name") + 1] for argv in printed] == p.names and p.calls() == []

    monkeypatch.setenv("FAKE_NGC_FAIL_ON", "05_j_i_5")
    assert ngc.launch(p.handle, p.run, p.settings()) == 1
    out, err = capsys.readouterr()
    progress = [line.split(" as NGC job")[0] for line in out.splitlines() if line.startswith("[")]
    assert progress == [f"[{i}/30] submitted job {i}" for i in range(1, 31) if i != 6]
    assert "[6/30] NGC submission of job 6 failed (exit 1)" in err and "29 of 30 NGC jobs submitted" in out
    assert sorted(_names(p.calls())) == p.names
    recorded = p.sql("select job_id, state from submissions order by id")
    assert recorded == [{"job_id": i, "state": "failed" if i == 6 else "submitted"} for i in range(1, 31)]

    monkeypatch.delenv("FAKE_NGC_FAIL_ON")
    assert ngc.launch(p.handle, p.run, p.settings()) == 0
    assert "[1/1] submitted job 6 as NGC job" in capsys.readouterr().out and _names(p.calls()[30:]) == [p.names[5]]
    assert ngc.launch(p.handle, p.run, p.settings()) == 0
    assert "nothing to do" in capsys.readouterr().out and len(p.calls()) == 31
    per_job = p.sql("select job_id, count(*) as n from submissions where state = 'submitted' group by job_id")
    assert per_job == [{"job_id": i, "n": 1} for i in range(1, 31)]


def test_a_launch_hands_the_pool_a_window_of_submissions_not_the_whole_run(paged):
    taken = []

    def commands():
        for i in range(20):
            taken.append(i)
            yield i, ["ngc", "batch", "run", "--name", f"n{i}"]

    with ngc.ThreadPoolExecutor(max_workers=2) as pool:
        for answered, ((i, _), (code, _, _)) in enumerate(ngc._answers(pool, commands(), window=4)):
            assert i == answered and code == 0 and len(taken) <= answered + 4
    assert taken == list(range(20))


def test_refresh_and_cancel_page_through_the_submissions_and_kill_a_chunk_of_ids_a_call(paged, monkeypatch):
    p = paged
    monkeypatch.setenv("FAKE_NGC_FAIL_ON", "05_j_i_5")
    ngc.launch(p.handle, p.run, p.settings())
    monkeypatch.delenv("FAKE_NGC_FAIL_ON")
    ngc.launch(p.handle, p.run, p.settings())  # job 6's second submission, the 31st, the one of it that stands
    ngc_ids = [
        s["external_id"] for s in p.sql("select external_id from submissions where state = 'submitted' order by id")
    ]
    assert len(ngc_ids) == 30

    ngc.refresh_states(p.handle, "big")
    infos = [argv[2] for argv in p.calls() if argv[:2] == ["batch", "info"]]
    assert infos == ngc_ids and p.sql("select distinct state from submissions order by state") == [
        {"state": "RUNNING"},
        {"state": "failed"},
    ]

    assert ngc.cancel_run(p.handle, p.run) == ["ngc batch kill: 30 NGC jobs in 8 calls of up to 4"]
    kills = [argv for argv in p.calls() if argv[:2] == ["batch", "kill"]]
    assert kills == [["batch", "kill", ",".join(ngc_ids[start : start + 4])] for start in range(0, 30, 4)]
    assert p.sql("select distinct state from submissions order by state") == [
        {"state": "cancelled"},
        {"state": "failed"},
    ]
    assert ngc.cancel_run(p.handle, p.run) == [] and len(p.calls()) == 31 + 30 + 8


def test_a_kill_call_that_fails_is_told_its_jobs_stay_under_way_and_the_next_cancel_tries_them_again(
    paged, monkeypatch
):
    p = paged
    ngc.launch(p.handle, p.run, p.settings())
    ngc_ids = [s["external_id"] for s in p.sql("select external_id from submissions order by id")]
    monkeypatch.setenv("FAKE_NGC_FAIL_ON", ngc_ids[9])  # in the third call's chunk of 4
    assert ngc.cancel_run(p.handle, p.run) == [
        "ngc batch kill: 26 NGC jobs in 7 calls of up to 4",
        f"ngc batch kill {','.join(ngc_ids[8:12])} failed: Job '{ngc_ids[9]}' could not be killed.",
        "1 of 8 `ngc batch kill` calls failed; `jq cancel big` tries again",
    ]
    standing = p.sql("select external_id from submissions where state = 'submitted' order by id")
    assert [s["external_id"] for s in standing] == ngc_ids[8:12]
    monkeypatch.delenv("FAKE_NGC_FAIL_ON")
    assert ngc.cancel_run(p.handle, p.run) == [f"ngc batch kill {','.join(ngc_ids[8:12])}"]
    assert p.sql("select distinct state from submissions") == [{"state": "cancelled"}]


def test_a_cancel_without_ngc_lists_the_first_ids_to_kill_and_the_query_that_lists_them_all(paged, monkeypatch):
    p = paged
    ngc.launch(p.handle, p.run, p.settings())
    ngc_ids = [s["external_id"] for s in p.sql("select external_id from submissions order by id")]
    monkeypatch.setattr(ngc, "SHOWN", 5)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != str(FAKE_NGC)))
    (message,) = ngc.cancel_run(p.handle, p.run)
    assert message.startswith(f"ngc is not on PATH: kill NGC jobs {','.join(ngc_ids[:5])} by hand, and 25 more: ")
    query = message.split('`jq sql "')[1].split('"`')[0]
    assert [s["external_id"] for s in p.sql(query)] == ngc_ids


def test_a_launch_after_a_refresh_submits_only_the_jobs_whose_ngc_jobs_failed(ngc_project):
    """`jq status --refresh` stores NGC's state in place of `submitted`: a job whose NGC job is running or done
    is not submitted again; one NGC says failed or was killed is."""
    p = ngc_project
    launch = ["launch", "nasty", "--backend", "ngc", "--ngc-job-template", "ngc.template"]
    p.jq(*launch, check=True)
    p.jq("status", "nasty", "--refresh", env=p.env(FAKE_NGC_STATUS="RUNNING"), check=True)
    again = p.jq(*launch, check=True)
    assert "every queued job was already submitted to NGC; nothing to do" in again.stdout
    with sqlite3.connect(p.db) as conn:  # what NGC would have said by the next refresh
        for job_id, state in [(1, "FAILED"), (2, "FINISHED_SUCCESS"), (3, "KILLED_BY_USER")]:
            conn.execute("update submissions set state = ? where job_id = ?", (state, job_id))
    p.jq(*launch, check=True)
    runs = [c for c in p.calls() if c[:2] == ["batch", "run"]]
    assert len(runs) == 5  # three at first, then the failed one's and the killed one's again
    assert [s["state"] for s in p.sql("select state from submissions order by id")][3:] == ["submitted", "submitted"]


@pytest.mark.parametrize("paged", ["sqlite", "postgres"], indirect=True)
def test_status_counts_a_run_s_job_by_job_submissions_once_they_are_too_many_to_list(paged, monkeypatch):
    """A run of one NGC job per experiment has a submission per job: `jq status` lists them while there are few and
    counts them by state beyond (report.PER_JOB_LISTED), so its output does not grow with the run."""
    from jobqueue import report

    p = paged
    monkeypatch.setenv("FAKE_NGC_FAIL_ON", "05_j_i_5")
    ngc.launch(p.handle, p.run, p.settings())
    status = json.loads(p.jq("status", "big", "--json", check=True).stdout)
    (run,) = status["runs"]
    assert run["per_job_submissions"] == {"ngc": {"failed": 1, "submitted": 29}}
    assert run["submissions"] == []
    text = p.jq("status", "big", check=True).stdout
    assert "big: ngc per-job submissions, one per job: 1 failed, 29 submitted" in text
    assert "per-job submission" not in text.replace("per-job submissions, one per job", "")

    monkeypatch.setattr(report, "PER_JOB_LISTED", 30)  # few enough: listed one by one, as before
    reader = report.open_reader(p.db)
    try:
        (run,) = report.status_report(reader, "big")["runs"]
    finally:
        reader.close()
    assert [s["job_id"] for s in run["submissions"]] == list(range(1, 31))


def test_launch_watch_tells_job_by_job_submissions_by_their_counts_once_they_are_too_many_to_list(paged):
    """`jq launch --watch` says when a submission's state changes; for a run of one NGC job per experiment beyond
    report.PER_JOB_LISTED, it says when their counts by state change, and reads only the counts."""
    from jobqueue.launch import _submission_changes

    p = paged
    ngc.launch(p.handle, p.run, p.settings())
    seen: dict = {}
    assert _submission_changes(p.handle, p.run, seen) == ["big: ngc per-job submissions, one per job: 30 submitted"]
    assert _submission_changes(p.handle, p.run, seen) == []
    queue.set_submissions_state(p.handle, [1, 2], "RUNNING")
    assert _submission_changes(p.handle, p.run, seen) == [
        "big: ngc per-job submissions, one per job: 2 RUNNING, 28 submitted"
    ]


def test_the_status_of_one_run_reads_no_submission_of_another_run_one_by_one(paged):
    """`jq status other` counts the submissions of the runs it does not show, whatever their number, and lists none."""
    from jobqueue import report

    p = paged
    ngc.launch(p.handle, p.run, p.settings())  # 30 per-job submissions of "big"
    one = RunDescription("other", [Experiment("k", "app", ParamGrid([("i", [0])]).generate_params())])
    queue.enqueue(p.handle, "other", expand(one), sweep="s", train_dir="t")
    reader = report.open_reader(p.db)
    listed = []
    rows = reader.rows

    def counting(query, params=None):
        found = rows(query, params)
        if query.startswith(report.SUBMISSIONS_SQL.split("{")[0]):
            listed.extend(found)
        return found

    reader.rows = counting
    try:
        (run,) = report.status_report(reader, "other")["runs"]
    finally:
        reader.close()
    assert run["submissions"] == [] and run["per_job_submissions"] == {}
    assert listed == []
