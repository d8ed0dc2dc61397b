"""The wheel carries the migrations and templates; the schema the models describe is the one the migrations make."""

import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobqueue.db import SCHEMA_HEAD, _alembic_config, _migrate_new_file, close_all, open_db
from jobqueue.models import metadata
from jobqueue.paths import data_path, file_lock
from jobqueue.template_db import cached_template, migrations_digest, shipped_template
from tests.conftest import REPO


def test_schema_head_constant_is_the_newest_migration():
    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == SCHEMA_HEAD


def test_the_models_match_what_the_migrations_create(project):
    db = open_db(project.db)
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_queue_sql_decodes_exactly_the_models_time_and_json_columns():
    # queue.py's plain SQL decodes columns by name: *_at as times, sql.JSON_COLUMNS as JSON. A new column that
    # breaks the rule would come back as text on SQLite; this catches it when the column is added.
    from jobqueue import sql

    for table in metadata.sorted_tables:
        for column in table.columns:
            where = f"{table.name}.{column.name}"
            assert isinstance(column.type, sa.DateTime) == column.name.endswith("_at"), where
            assert isinstance(column.type, sa.JSON) == (column.name in sql.JSON_COLUMNS), where


def imports_of(cwd, env: dict, *args: str) -> list[str]:
    """The SQLAlchemy and Alembic modules that `jq ARGS` imported, run in cwd (it must succeed)."""
    code = (
        "import json, sys; from jobqueue.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def schema_of(path) -> dict:
    """What a new DB's file holds: every table, index and trigger as SQL, the Alembic revision, and whether it is sound."""
    conn = sqlite3.connect(path)
    try:
        return {
            "objects": conn.execute(
                "select type, name, tbl_name, sql from sqlite_master order by type, name"
            ).fetchall(),
            "revision": conn.execute("select version_num from alembic_version").fetchall(),
            "user_version": conn.execute("pragma user_version").fetchone(),
            "integrity": conn.execute("pragma integrity_check").fetchall(),
        }
    finally:
        conn.close()


def test_a_launch_into_an_existing_or_a_new_sqlite_db_never_imports_sqlalchemy(sqlite_project):
    # Importing SQLAlchemy takes longer than all the DB work of a quick sweep (see benchmarks/launch_vs_xargs.py):
    # the launcher and its worker use plain SQL on SQLite's own driver, a new DB is a copy of the template DB the
    # migrations made, and Alembic runs only when there is no template yet or a DB needs upgrading.
    p = sqlite_project
    p.sweep("quick", "true", 3)
    p.jq("enqueue", "quick", check=True)
    assert cached_template().exists()
    for args in (
        ["launch", "quick", "--no-progress"],
        ["worker"],
        ["status"],
        ["launch", "quick", "--no-progress", "--db", "new.db"],
    ):
        assert imports_of(p.path, p.env(), *args) == [], args
    assert p.states() == {"succeeded": 3}
    assert json.loads(p.jq("list", "--json", "--db", "new.db", check=True).stdout)[2]["state"] == "succeeded"


def test_a_new_sqlite_db_is_a_copy_of_the_template_that_the_migrations_made(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says: ~/.cache
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cached_template().parent == tmp_path / "home" / ".cache" / "jobqueue"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = cached_template()
    assert template.parent == tmp_path / "cache" / "jobqueue" and not template.exists()
    open_db(str(tmp_path / "first.db"))  # no template yet: the migrations make it, then it is copied
    assert sorted(f.name for f in template.parent.iterdir()) == [template.name, template.name + ".lock"]
    open_db(str(tmp_path / "second.db"))
    close_all()
    _migrate_new_file(tmp_path / "by_alembic.db")  # the migrations run on the file itself
    expected = schema_of(tmp_path / "by_alembic.db")
    assert (
        len(expected["objects"]) > 10
        and expected["revision"] == [(SCHEMA_HEAD,)]
        and expected["integrity"] == [("ok",)]
    )
    for made in (template, tmp_path / "first.db", tmp_path / "second.db"):
        assert schema_of(made) == expected, made
    for copy in ("first.db", "second.db"):
        assert sqlite3.connect(tmp_path / copy).execute("pragma journal_mode").fetchone() == ("wal",)


def test_a_db_holding_tables_of_its_own_gets_the_migrations_and_keeps_its_tables(sqlite_project):
    p = sqlite_project
    conn = sqlite3.connect(p.db)
    conn.execute("create table notes (text)")
    conn.execute("insert into notes values ('keep me')")
    conn.commit()
    conn.close()
    p.sweep("q", "true", 2)
    p.jq("enqueue", "q", check=True)
    conn = sqlite3.connect(p.db)
    assert conn.execute("select text from notes").fetchall() == [("keep me",)]
    assert conn.execute("select count(*) from jobs").fetchone() == (2,)


def test_without_a_sound_template_the_migrations_run_on_the_new_db_itself(sqlite_project, tmp_path, monkeypatch):
    p = sqlite_project
    p.sweep("q", "true", 2)
    # A cache directory that cannot be made (its parent is a file): the migrations make the DB, as before templates.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uncached = imports_of(p.path, p.env(XDG_CACHE_HOME=str(blocker / "cache")), "enqueue", "q", "--db", "no-cache.db")
    assert "alembic" in uncached and "sqlalchemy" in uncached
    expected = schema_of(p.path / "no-cache.db")
    assert expected["revision"] == [(SCHEMA_HEAD,)]
    # A damaged template is not copied but thrown away, and the next new DB makes a sound one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = cached_template()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"SQLite format 3\0" + b"\xff" * 4080)
    p.jq("enqueue", "q", "--db", "damaged.db", check=True)
    assert not template.exists()
    p.jq("enqueue", "q", "--db", "remade.db", check=True)
    for made in ("damaged.db", "remade.db"):
        assert schema_of(p.path / made) == expected, made
        assert sqlite3.connect(p.path / made).execute("select count(*) from jobs").fetchone() == (2,)
    assert schema_of(template) == expected


def test_processes_making_new_dbs_at_once_with_an_empty_cache_make_one_template(sqlite_project, tmp_path):
    p = sqlite_project
    p.sweep("many", "true", 3)
    env = p.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    procs = [p.start("enqueue", "many", "--db", f"db{i}.db", env=env) for i in range(8)]
    results = [(proc.wait(120), proc.stderr.read()) for proc in procs]
    assert all(code == 0 for code, _ in results), results
    (template,) = (tmp_path / "cache" / "jobqueue").glob("*.db")
    assert sorted(f.name for f in template.parent.iterdir()) == [template.name, template.name + ".lock"]
    expected = schema_of(template)
    for i in range(8):
        assert schema_of(p.path / f"db{i}.db") == expected
        assert sqlite3.connect(p.path / f"db{i}.db").execute("select count(*) from jobs").fetchone() == (3,)


def test_a_new_db_gets_its_schema_only_while_it_holds_the_db_lock(sqlite_project):
    """Two processes meeting at one new DB must not both copy the template into it (the second copy would drop what
    the first had written): the schema is made under the DB's lock, which this test holds meanwhile."""
    p = sqlite_project
    p.sweep("few", "true", 2)
    with file_lock(Path(p.db + ".lock")):
        enqueue = p.start("enqueue", "few")
        with pytest.raises(subprocess.TimeoutExpired):
            enqueue.wait(3)
        assert sqlite3.connect(p.db).execute("select count(*) from sqlite_master").fetchone() == (0,)
    assert enqueue.wait(60) == 0, enqueue.stderr.read()
    assert len(p.jobs()) == 2


def test_a_changed_migration_gets_a_template_of_its_own(tmp_path):
    migrations = shutil.copytree(
        data_path("migrations"), tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    digest = migrations_digest()
    assert (
        migrations_digest(migrations) == digest
        and digest in cached_template().name
        and digest in shipped_template().name
    )
    first = migrations / "versions" / "0001_initial.py"
    text = first.read_text()
    first.write_text(text.replace('server_default="0"', 'server_default="1"', 1))
    assert migrations_digest(migrations) != digest
    first.write_text(text)
    (migrations / "versions" / "0002_next.py").write_text("revision = '0002'\ndown_revision = '0001'\n")
    assert migrations_digest(migrations) != digest
    (migrations / "versions" / "0002_next.py").unlink()
    (migrations / "env.py").write_text((migrations / "env.py").read_text() + "\n# render_as_batch off\n")
    assert migrations_digest(migrations) != digest


def test_a_wheel_installed_elsewhere_migrates_and_runs_from_its_own_files(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("jobqueue-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    template = f"jobqueue/_data/{shipped_template().name}"  # made by the build (hatch_build.py)
    for shipped in (
        "jobqueue/_data/alembic.ini",
        "jobqueue/_data/migrations/env.py",
        "jobqueue/_data/migrations/versions/0001_initial.py",
        "jobqueue/_data/workers/sbatch_worker.sh",
        "jobqueue/_data/workers/ngc_job.template",
        template,
    ):
        assert shipped in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "work"
    shutil.copytree(REPO / "experiments", work / "experiments")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import jobqueue; print(jobqueue.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target))
    dry = subprocess.run(
        [sys.executable, "-m", "jobqueue", "enqueue", "experiments.quickstart", "--dry-run", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(json.loads(dry)) == 6
    # The first DB after install is a copy of the shipped template: no SQLAlchemy, and no template made in a cache.
    assert imports_of(work, env, "enqueue", "experiments.quickstart") == []
    assert not (tmp_path / ".cache").exists()
    # A DB holding a table of its own gets the wheel's migrations, run from the wheel's own files.
    with sqlite3.connect(work / "own.db") as conn:
        conn.execute("create table notes (text)")
    assert "alembic" in imports_of(work, env, "enqueue", "experiments.quickstart", "--db", "own.db")
    _migrate_new_file(tmp_path / "by_alembic.db")
    expected = schema_of(tmp_path / "by_alembic.db")
    assert schema_of(target / template) == schema_of(work / "jobqueue.db") == expected
    own = schema_of(work / "own.db")
    assert [o for o in own["objects"] if o[1] != "notes"] == expected["objects"] and own["revision"] == expected[
        "revision"
    ]
    for db in ("jobqueue.db", "own.db"):
        assert sqlite3.connect(work / db).execute("select count(*) from jobs").fetchone() == (6,)
