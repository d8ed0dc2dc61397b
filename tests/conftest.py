"""Shared fixtures: a project directory with a real SQLite file, the real `jq` CLI in a subprocess,
and (once per session) real PostgreSQL and Slurm servers from Debian's packages.

With CI set, a service that cannot start fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


def service_unavailable(what: str, why: str):
    """Skip on a developer machine without the service; fail in CI, where it must be there."""
    message = f"{what} could not start: {why}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def refused(proc: subprocess.CompletedProcess, says: str) -> str:
    """A command's refusal of bad input: exit 2, one line on stderr, `jq: error: ...` with `says` in it."""
    detail = f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode == 2, detail
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), f"not one line: {detail}"
    assert proc.stderr.startswith("jq: error: ") and "Traceback" not in proc.stderr, detail
    assert says in proc.stderr, detail
    return proc.stderr.rstrip("\n")


@dataclass
class Project:
    """A directory a researcher works in: sweep files, a DB, and the `jq` command run as a subprocess."""

    path: Path
    db: str

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        return target

    def sweep(self, module: str, cmd: str, n: int, run: str | None = None, extra: str = "", **run_kwargs) -> str:
        kwargs = "".join(f", {k}={v!r}" for k, v in run_kwargs.items())
        self.write(
            f"{module}.py",
            f"""
            from jobqueue import Experiment, ParamGrid, RunDescription
            RUN_DESCRIPTION = RunDescription({run or module!r}, experiments=[
                Experiment("j", {cmd!r}, ParamGrid([("i", list(range({n})))]).generate_params(){extra}),
            ]{kwargs})
        """,
        )
        return module

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["JQ_DB"] = self.db
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def jq(
        self,
        *args: str,
        check: bool | None = None,
        timeout: float = 120,
        env: dict | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "jobqueue", *args],
            cwd=self.path,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check:
            assert proc.returncode == 0, f"jq {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def fails(self, *args: str, says: str, env: dict | None = None) -> str:
        """Run `jq ARGS`, which must refuse: exit 2 and one line on stderr, `jq: error: ...` with `says` in it and
        no traceback. Returns the line."""
        proc = self.jq(*args, env=env)
        return refused(proc, says)

    def start(self, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "jobqueue", *args],
            cwd=self.path,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )

    def jobs(self, run: str | None = None) -> list[dict]:
        args = ["list", "--json"] + (["--run", run] if run else [])
        return json.loads(self.jq(*args, check=True).stdout)

    def states(self, run: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs(run):
            counts[job["state"]] = counts.get(job["state"], 0) + 1
        return counts

    def sql(self, query: str) -> list[dict]:
        return json.loads(self.jq("sql", query, "--json", check=True).stdout)

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition", diagnose=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        detail = f"\n{diagnose()}" if diagnose else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


@pytest.fixture(scope="session", autouse=True)
def template_cache(tmp_path_factory) -> Path:
    """The cache that holds jobqueue's template DB (jobqueue/template_db.py): the session's own, not the user's.
    Every process the tests start inherits it; a test that needs an empty one sets XDG_CACHE_HOME itself."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    return cache


@pytest.fixture
def project(tmp_path, db_url) -> Project:
    return Project(tmp_path, db_url(tmp_path))


@pytest.fixture
def sqlite_project(tmp_path) -> Project:
    return Project(tmp_path, str(tmp_path / "jobqueue.db"))


# --- PostgreSQL ------------------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def started_postgres(tmp_path_factory, name: str = "pg"):
    """A throwaway PostgreSQL server (start_postgres), or the test skipped (failed in CI) saying why it could not
    start."""
    from tests.services import start_postgres

    try:
        return start_postgres(tmp_path_factory.mktemp(name), name=name)
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported the same way
        service_unavailable("PostgreSQL", str(exc))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A throwaway PostgreSQL, run as the `postgres` user when we are root."""
    server = started_postgres(tmp_path_factory)
    yield server
    server.stop()


_pg_databases = iter(range(10**6))


def _pg_factory(server):
    def make(_tmp_path) -> str:
        return server.create_database(f"jq_test_{os.getpid()}_{next(_pg_databases)}")

    return make


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request):
    """Run the test on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return lambda tmp_path: str(tmp_path / "jobqueue.db")
    return _pg_factory(request.getfixturevalue("postgres_server"))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    from tests.services import start_slurm

    try:
        cluster = start_slurm(Path("/tmp") / f"jq-slurm-{os.getpid()}")
    except Exception as exc:  # noqa: BLE001
        service_unavailable("Slurm", str(exc))
    yield cluster
    cluster.stop()
