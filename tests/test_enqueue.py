"""`jq enqueue`, the database and reading the history, through the real CLI on real files."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from jobqueue.paths import SCHEMA_HEAD
from tests.conftest import REPO, refused

SF_SWEEP = """
from sample_factory.launcher.run_description import Experiment, ParamGrid, RunDescription
from sample_factory.launcher.launcher_utils import seeds

_params = ParamGrid([
    ("seed", seeds(3)),
    (("serial_mode", "async_rl"), ([True, False], [False, True])),
])
RUN_DESCRIPTION = RunDescription("sf_sweep", experiments=[
    Experiment("sf", "python -m train --algo=APPO", _params.generate_params(randomize=True)),
], use_gpus=2, experiments_per_gpu=-1, max_parallel=1)
"""


def dry_run(project, target):
    return json.loads(project.jq("enqueue", target, "--dry-run", "--json", check=True).stdout)


def test_dry_run_json_has_exactly_the_documented_keys_and_writes_nothing(sqlite_project):
    p = sqlite_project
    p.sweep("small", "python train.py", 3)
    jobs = dry_run(p, "small")
    assert [set(j) for j in jobs] == [{"name", "cmd", "argv", "root_dir", "env"}] * 3
    assert jobs[0]["cmd"] == "python train.py --i=0 --experiment=00_j_i_0 --train_dir=./train_dir/small/j_"
    assert jobs[0]["argv"][-1] == "--train_dir=./train_dir/small/j_" and jobs[0]["env"] is None
    assert not (p.path / "jobqueue.db").exists()


def test_the_quickstart_and_seed_examples_expand(sqlite_project):
    env = sqlite_project.env()
    out = subprocess.run(
        [sys.executable, "-m", "jobqueue", "enqueue", "experiments.mujoco_all_envs", "--dry-run", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = json.loads(out)
    assert len(jobs) == 90
    assert jobs[0]["name"] == "00_mujoco_all_envs_see_0_env_mujoco_ant"
    assert jobs[89]["cmd"].startswith(
        "python -m sf_examples.mujoco.train_mujoco --algo=APPO --with_wandb=True --wandb_tags mujoco --seed=9999 --env=mujoco_walker"
    )


def test_enqueue_is_idempotent_and_a_grown_sweep_adds_only_new_jobs(project):
    project.sweep("grow", "app", 3)
    first = project.jq("enqueue", "grow", check=True).stdout
    assert "Enqueued 3 new jobs" in first
    again = project.jq("enqueue", "grow", check=True).stdout
    assert "Nothing to add: all 3 jobs" in again
    project.sweep("grow", "app", 5)
    grown = project.jq("enqueue", "grow", check=True).stdout
    assert "Enqueued 2 new jobs" in grown and "(3 were already there)" in grown
    jobs = project.jobs()
    assert [j["name"] for j in jobs] == [f"0{i}_j_i_{i}" for i in range(5)]
    assert {j["cwd"] for j in jobs} == {str(project.path)}
    runs = project.sql("select name, count(*) as n from runs group by name")
    assert runs == [{"name": "grow", "n": 1}]


def test_sample_factory_sweep_files_load_unmodified_and_seeds_are_reproducible(sqlite_project):
    p = sqlite_project
    p.write("sf_sweep.py", SF_SWEEP)
    first = dry_run(p, "sf_sweep")
    assert first == dry_run(p, "sf_sweep.py")  # module name or path: the same sweep, the same seeds and order
    assert len(first) == 6
    seeds_used = {a for j in first for a in j["argv"] if a.startswith("--seed=")}
    assert len(seeds_used) == 3 and all(1000000 <= int(s.split("=")[1]) < 9999999 for s in seeds_used)
    p.jq("enqueue", "sf_sweep", check=True)
    assert "Nothing to add" in p.jq("enqueue", "sf_sweep", check=True).stdout
    (run,) = p.sql("select settings from runs")
    # Stored under their own names (Sample Factory 1.x's use_gpus is num_gpus), with the format's version.
    assert json.loads(run["settings"]) == {"version": 2, "num_gpus": 2, "experiments_per_gpu": -1, "max_parallel": 1}


def test_other_sample_factory_imports_name_the_missing_module(sqlite_project):
    p = sqlite_project
    p.write("needs_sf.py", "from sample_factory.utils.utils import log\n" + SF_SWEEP)
    p.fails("enqueue", "needs_sf", says="needs_sf.py: imports 'sample_factory.utils'")


def db_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


ERROR_CASES = {
    "module not found": ("no.such.module", None, "no.such.module: module not found"),
    "syntax error": ("broken.py", "RUN_DESCRIPTION = (\n", "broken.py:1: syntax error"),
    "no RUN_DESCRIPTION": ("empty.py", "x = 1\n", "empty.py: defines no RUN_DESCRIPTION"),
    "wrong type": (
        "wrong.py",
        "RUN_DESCRIPTION = [1, 2]\n",
        "wrong.py: RUN_DESCRIPTION is a list, not a RunDescription",
    ),
    "raises": ("raises.py", "x = 1\nraise ValueError('bad grid')\n", "raises.py:2: raised ValueError: bad grid"),
    "duplicate names": (
        "dupes.py",
        "from jobqueue import *\nRUN_DESCRIPTION = RunDescription('d', experiments=["
        "Experiment('e', 'app', [{'a': 1}]), Experiment('e', 'app', [{'a': 1}])])\n",
        "dupes.py: two jobs are named '00_e_a_1'",
    ),
    "unstorable value": (
        "objs.py",
        "from jobqueue import *\nRUN_DESCRIPTION = RunDescription('o', experiments=["
        "Experiment('e', 'app', [{'a': object()}])])\n",
        "parameter 'a' has a value of type object",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_sweep_files_give_one_clear_line_exit_2_and_leave_the_db_as_it_was(sqlite_project, case):
    p = sqlite_project
    p.sweep("good", "app", 2)
    p.jq("enqueue", "good", check=True)
    db = p.path / "jobqueue.db"
    before = db_digest(db)
    target, text, message = ERROR_CASES[case]
    if text is not None:
        p.write(target, text)
    proc = p.jq("enqueue", target)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr
    assert db_digest(db) == before


def test_db_errors_are_one_clear_line(sqlite_project, tmp_path):
    p = sqlite_project
    p.sweep("good", "app", 2)
    cases = []
    cases.append((["--db", str(tmp_path / "missing" / "q.db")], "directory"))
    (tmp_path / "notadb.db").write_text("hello, I am a text file\n" * 10)
    cases.append((["--db", str(tmp_path / "notadb.db")], "is not an SQLite database"))
    cases.append((["--db", "sqlite://q.db"], "not an SQLite URL jobqueue can open"))  # two slashes: no path
    # A symlink planted where a new DB's migration lock goes is refused, not followed to what it points at.
    (tmp_path / "planted.db.lock").symlink_to(tmp_path / "elsewhere")
    cases.append((["--db", str(tmp_path / "planted.db")], "planted.db.lock to make or upgrade its schema"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # Root writes through permissions; a read-only mount stops even root.
    read_only = (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode == 0
    )
    if read_only:
        cases.append((["--db", str(ro / "q.db")], "not writable"))
    for args, message in cases:
        proc = p.jq("enqueue", "good", *args)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert (tmp_path / "notadb.db").read_text().startswith("hello")
    assert not (tmp_path / "elsewhere").exists()
    if os.geteuid() == 0:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    assert read_only, "the read-only directory case was not tried"


def test_a_truncated_db_and_a_db_from_a_newer_version_are_refused(sqlite_project):
    p = sqlite_project
    p.sweep("good", "app", 50)
    p.jq("enqueue", "good", check=True)
    db = p.path / "jobqueue.db"
    p.jq("sql", "select 1", check=True)
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '9999_future'")
    proc = p.jq("status")
    assert proc.returncode == 2 and "written by a newer jobqueue (schema 9999_future)" in proc.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '0001'")
    conn = sqlite3.connect(db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    proc = p.jq("list")
    assert proc.returncode == 2 and "damaged" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_jq_sql_is_read_only(project):
    project.sweep("q", "app", 3)
    project.jq("enqueue", "q", check=True)
    for statement in (
        "delete from jobs",
        "update jobs set state = 'failed'",
        "drop table jobs",
        "insert into runs (name) values ('x')",
    ):
        proc = project.jq("sql", statement)
        assert proc.returncode == 2 and "jq sql is read-only" in proc.stderr, (statement, proc.stderr)
    assert project.states() == {"queued": 3}
    csv_out = project.jq("sql", "select name, state from jobs order by id", "--csv", check=True).stdout
    assert csv_out.splitlines()[:2] == ["name,state", "00_j_i_0,queued"]
    plain = project.jq(
        "sql", "select id, name, exit_code, 'two\nlines' as note from jobs order by id", check=True
    ).stdout
    assert plain.splitlines() == [
        "id  name      exit_code  note"
    ] + [  # numbers right-aligned, NULL empty, one line a row
        f"{job['id']:>2}  {job['name']}  {'':9}  two\\nlines" for job in project.jobs()
    ]
    assert project.jq("sql", "select id, name from jobs where 0 = 1", check=True).stdout == "id  name\n"


def test_long_outputs_keep_each_command_whole_on_one_line(sqlite_project):
    p = sqlite_project
    p.sweep("wide", "python train.py --a-long-flag-name=" + "x" * 300, 3)
    plan = p.jq("enqueue", "wide", "--dry-run", check=True).stdout.splitlines()
    assert plan[:2] == ["wide: 3 jobs (dry run, nothing written)", "#  name      command"]
    jobs = json.loads(p.jq("enqueue", "wide", "--dry-run", "--json", check=True).stdout)
    assert plan[2:] == [f"{i}  {job['name']}  {job['cmd']}" for i, job in enumerate(jobs)]
    p.jq("enqueue", "wide", check=True)
    listing = p.jq("list", check=True).stdout.splitlines()
    assert listing[0] == "id  run   name      state   tries  exit  command"
    assert listing[1:] == [
        f"{job['id']:>2}  wide  {job['name']}  queued      0        {job['cmd']}" for job in p.jobs()
    ]


def test_twenty_processes_opening_a_fresh_db_at_once_all_succeed(sqlite_project):
    p = sqlite_project
    p.sweep("many", "app", 5)
    procs = [p.start("enqueue", "many") for _ in range(20)]
    results = [(proc.wait(60), proc.stdout.read(), proc.stderr.read()) for proc in procs]
    assert all(code == 0 for code, _, _ in results), results
    assert sum("Enqueued 5 new jobs" in out for _, out, _ in results) == 1
    assert len(p.jobs()) == 5
    assert p.sql("select version_num from alembic_version") == [{"version_num": SCHEMA_HEAD}]


def test_status_and_list(project):
    project.sweep("a", "app", 2)
    project.sweep("b", "app", 3)
    project.jq("enqueue", "a", check=True)
    project.jq("enqueue", "b", check=True)
    report = json.loads(project.jq("status", "--json", check=True).stdout)
    assert [(r["run"], r["total"], r["counts"]["queued"]) for r in report["runs"]] == [("a", 2, 2), ("b", 3, 3)]
    assert "queued" in project.jq("status", "b", check=True).stdout
    lines = project.jq("list", "--run", "b", check=True).stdout.splitlines()
    assert len(lines) == 4 and "00_j_i_0" in lines[1]
    unknown = project.jq("status", "nope")
    refused(unknown, "no run named 'nope'")


def test_a_db_on_a_network_file_system_uses_a_rollback_journal_and_says_so(sqlite_project):
    from jobqueue.db import filesystem_type

    p = sqlite_project
    p.sweep("shared", "true", 2)
    fstype = filesystem_type(p.path)
    assert fstype, "the test needs /proc/mounts"
    # Declare this file system a network one (as nfs, lustre, gpfs, beegfs and cifs are built in).
    proc = p.jq("enqueue", "shared", env=p.env(JQ_NETWORK_FILESYSTEMS=fstype), check=True)
    assert f"is on {fstype}, where WAL is unsafe: using a rollback journal" in proc.stderr
    assert "postgresql+psycopg://" in proc.stderr
    import sqlite3

    assert sqlite3.connect(p.db).execute("pragma journal_mode").fetchone()[0] == "delete"
    plain = p.jq("list", check=True)
    assert "warning" not in plain.stderr
    assert sqlite3.connect(p.db).execute("pragma journal_mode").fetchone()[0] == "wal"


def test_commands_close_the_db_so_sqlite_checkpoints_and_removes_its_wal(sqlite_project):
    """A WAL left behind makes every later reader replay it (jq status on a big DB went from 0.2 s to 0.5 s)."""
    p = sqlite_project
    p.sweep("tidy", "true", 200)
    p.jq("enqueue", "tidy", check=True)
    assert (p.path / "jobqueue.db").exists() and not (p.path / "jobqueue.db-wal").exists()
    p.jq("worker", "--quiet", check=True)
    assert not (p.path / "jobqueue.db-wal").exists()


@pytest.mark.parametrize("template", [True, False], ids=["template", "migrations-on-the-db"])
def test_a_db_whose_path_has_url_characters_in_it_works(sqlite_project, tmp_path, template):
    # SQLite's URIs and SQLAlchemy's URLs give "#", "?" and "%41" meanings of their own; a path is a path.
    p = sqlite_project
    p.sweep("q", "true", 3)
    if not template:  # a cache that cannot be made: the migrations run on the DB itself, through SQLAlchemy
        (tmp_path / "a-file").write_text("")
    env = p.env(**({} if template else {"XDG_CACHE_HOME": str(tmp_path / "a-file" / "cache")}))
    for name in ("a#b", "c%41", "d?e", "f g"):
        db = tmp_path / name / "q.db"
        db.parent.mkdir()
        for args in (["enqueue", "q"], ["worker", "--quiet"], ["status"], ["sql", "select 1"]):
            proc = p.jq(*args, "--db", str(db), env=env)
            assert proc.returncode == 0, (name, args, proc.stderr)
        assert "q " in p.jq("status", "--db", str(db), env=env).stdout
        jobs = json.loads(p.jq("list", "--json", "--db", str(db), env=env, check=True).stdout)
        assert [job["state"] for job in jobs] == ["succeeded"] * 3, name
    assert not (tmp_path / "cA").exists()
