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
