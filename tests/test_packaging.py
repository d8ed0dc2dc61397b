"""The wheel carries the migrations and templates; the schema the models describe is the one the migrations make."""

import json
import shutil
import subprocess
import sys
import zipfile

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobqueue.db import SCHEMA_HEAD, _alembic_config, open_db
from jobqueue.models import metadata
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


def test_a_launch_into_an_existing_sqlite_db_never_imports_sqlalchemy(sqlite_project):
    # Importing SQLAlchemy takes longer than all the DB work of a quick sweep (see benchmarks/launch_vs_xargs.py):
    # the launcher and its worker use plain SQL on SQLite's own driver, and Alembic only when a DB needs migrating.
    p = sqlite_project
    p.sweep("quick", "true", 3)
    p.jq("enqueue", "quick", check=True)
    code = ("import sys; from jobqueue.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))")
    for args in (["launch", "quick", "--no-progress"], ["worker"], ["status"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=p.path, env=p.env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", (args, proc.stdout)
    assert p.states() == {"succeeded": 3}


def test_a_wheel_installed_elsewhere_migrates_and_runs_from_its_own_files(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("jobqueue-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("jobqueue/_data/alembic.ini", "jobqueue/_data/migrations/env.py",
                    "jobqueue/_data/migrations/versions/0001_initial.py", "jobqueue/_data/workers/sbatch_worker.sh",
                    "jobqueue/_data/workers/ngc_job.template"):
        assert shipped in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    shutil.copytree(REPO / "experiments", work / "experiments")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import jobqueue; print(jobqueue.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    dry = subprocess.run([sys.executable, "-m", "jobqueue", "enqueue", "experiments.quickstart", "--dry-run", "--json"],
                         cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert len(json.loads(dry)) == 6
    subprocess.run([sys.executable, "-m", "jobqueue", "enqueue", "experiments.quickstart"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=120)
    engine = sa.create_engine(f"sqlite:///{work / 'jobqueue.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from jobs")).scalar() == 6
