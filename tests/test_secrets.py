"""A DB password is never shown, written to a file or put on a command line, with a real PostgreSQL role that
needs its scram-sha-256 password (over TCP: the session server's Unix socket trusts everyone).

Each test greps everything jq printed, every file under the project and every /proc/*/cmdline for the password.
"""

import itertools
import json
import os
import re
import secrets
import shlex
from pathlib import Path

import psutil
import pytest

from tests.conftest import Project
from tests.services import free_port
from tests.test_ngc import FAKE_NGC

pytestmark = pytest.mark.postgres

_roles = itertools.count()
NGC_TEMPLATE = """\
ngc batch run --name "{{ name }}" --image "nvidia/pytorch:23.10-py3" --instance dgx1v.16g.1.norm \\
  --result /result --commandline "cd /workspace/project && {{ experiment_cmd }}" --label "db={{ db }}"
"""


class SecretProject(Project):
    """A project whose DB is reached as a role with a password; it keeps every output of jq to grep it."""

    password: str
    url: str  # postgresql+psycopg://ROLE:PASSWORD@127.0.0.1:PORT/DBNAME
    shown: str  # the URL as jq may show it: ROLE:***@
    bare: str  # the URL without its password: ROLE@
    outputs: list

    def jq(self, *args, **kwargs):
        proc = super().jq(*args, **kwargs)
        label = "jq " + shlex.join(args).replace(self.password, "PASSWORD")  # as typed; not what jq printed
        self.outputs += [f"{label}: stdout", proc.stdout, f"{label}: stderr", proc.stderr]
        return proc

    def jq_db(self, *args: str, url: str | None = None, **kwargs):
        """jq with --db on its command line, as a user types it, and no $JQ_DB."""
        env = dict(kwargs.pop("env", None) or self.env())
        del env["JQ_DB"]
        return self.jq(*args, "--db", url or self.url, env=env, **kwargs)

    def assert_password_nowhere(self, cmdlines: dict[int, bytes] | None = None) -> None:
        secret = self.password.encode()
        assert self.outputs and not any(self.password in text for text in self.outputs), "\n".join(self.outputs)
        files = [f for f in self.path.rglob("*") if f.is_file()]
        assert files and [f for f in files if secret in f.read_bytes()] == [], "files holding the password"
        leaks = {pid: line.replace(secret, b"PASSWORD") for pid, line in (cmdlines or {}).items() if secret in line}
        assert leaks == {}, "command lines holding the password"


@pytest.fixture
def secret_project(tmp_path, postgres_server) -> SecretProject:
    n = next(_roles)
    password = "S3cret" + secrets.token_hex(8)
    url = postgres_server.create_password_role(f"alice_{os.getpid()}_{n}", password, f"jq_secret_{os.getpid()}_{n}")
    p = SecretProject(tmp_path, url)
    p.password, p.url, p.outputs = password, url, []
    p.shown, p.bare = url.replace(f":{password}@", ":***@"), url.replace(f":{password}@", "@")
    return p


def command_lines() -> dict[int, bytes]:
    """Every process's command line, as any user of the host can read it."""
    lines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                pass
    return lines


def test_the_password_really_is_needed(secret_project):
    p = secret_project
    without = p.jq_db("status", url=p.bare)
    assert without.returncode == 2 and "no password supplied" in without.stderr, without.stderr
    assert p.jq_db("status").returncode == 0


def test_a_local_launch_and_every_command_after_it_show_the_password_nowhere(secret_project):
    p = secret_project
    p.sweep("hush", "sh -c 'touch started$1; sleep 3' job", 2)
    # $JQ_DB, the way the docs give a password: a --db typed by the user would be on jq launch's own command line.
    launch = p.start("launch", "hush", "--max-parallel", "2")
    try:
        p.wait_for(lambda: len(list(p.path.glob("started*"))) == 2, timeout=60, what="both jobs to start")
        cmdlines = command_lines()
        family = psutil.Process(launch.pid).children(recursive=True)
        # A job that writes its environment to its log: JQ_DB is there (jobqueue finds its jobs by it), not the password.
        job_environs = [Path(f"/proc/{c.pid}/environ").read_bytes() for c in family if c.name() == "sleep"]
        stdout, stderr = launch.communicate(timeout=60)
    finally:
        launch.kill()
    p.outputs += ["jq launch: stdout", stdout, "jq launch: stderr", stderr]
    assert launch.returncode == 0, stderr
    # What was read: the launch's guard, each job's shell and its sleep.
    seen = [cmdlines[c.pid].split(b"\0") for c in family if c.pid in cmdlines]
    assert [argv for argv in seen if argv[1:4] == [b"-I", b"-S", b"-c"]], "the worker's guard"
    assert len([argv for argv in seen if argv[:1] == [b"sleep"]]) == 2, seen
    assert len(job_environs) == 2 and all(
        f"JQ_DB={p.bare}\0".encode() in env and p.password.encode() not in env for env in job_environs
    ), [env.replace(p.password.encode(), b"PASSWORD") for env in job_environs]

    assert p.states() == {"succeeded": 2}
    status = p.jq_db("status", check=True).stdout
    assert "hush" in status and "succeeded" in status, status
    assert len(p.jq_db("list", check=True).stdout.splitlines()) == 3
    assert json.loads(p.jq_db("sql", "select count(*) as n from jobs", "--json", check=True).stdout) == [{"n": 2}]
    bad_sql = p.jq_db("sql", "selec nothing")
    assert bad_sql.returncode == 2 and bad_sql.stderr.startswith("jq: error: jq sql: syntax error"), bad_sql.stderr
    enqueued = p.jq_db("enqueue", "hush", check=True).stdout
    assert f"are already in {p.shown}." in enqueued

    port = re.search(r"@127\.0\.0\.1:(\d+)/", p.url).group(1)
    nobody = f"@127.0.0.1:{free_port()}/"  # where nothing listens
    elsewhere = p.jq_db("status", url=p.url.replace(f"@127.0.0.1:{port}/", nobody))
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith(
        f"jq: error: --db {p.shown.replace(f'@127.0.0.1:{port}/', nobody)}: cannot connect"
    )
    wrong = "Wr0ng" + secrets.token_hex(8)
    refused = p.jq_db("list", url=p.url.replace(p.password, wrong))
    assert refused.returncode == 2 and "password authentication failed" in refused.stderr
    assert wrong not in refused.stderr and p.shown in refused.stderr
    p.assert_password_nowhere(cmdlines)


def test_print_only_shows_neither_a_slurm_script_nor_an_ngc_command_with_the_password(secret_project):
    p = secret_project
    p.sweep("hush", "python train.py", 2)
    p.write("template.sh", '#!/bin/bash\necho "worker for $JQ_RUN on $JQ_DB"\nexec $CMD\n')
    for mode in ("workers", "per-job"):
        out = p.jq_db(
            "launch",
            "hush",
            "--backend",
            "slurm",
            "--slurm-print-only",
            "--slurm-mode",
            mode,
            "--slurm-sbatch-template",
            "template.sh",
            check=True,
        ).stdout
        workers = [line for line in out.splitlines() if " -m jobqueue worker " in line]
        assert len(workers) == (1 if mode == "workers" else 2), out
        assert all("--db" not in line for line in workers), "the worker reads $JQ_DB"
        assert 'echo "worker for hush on $JQ_DB"' in out, "left for the shell"
        assert f"# sbatch runs with JQ_DB={p.shown} in its environment" in out

    env = p.env(FAKE_NGC_LOG=str(p.path / "ngc_calls.jsonl"))
    env["PATH"] = f"{FAKE_NGC}{os.pathsep}{env['PATH']}"
    p.write("ngc.template", NGC_TEMPLATE)
    printed = p.jq_db(
        "launch",
        "hush",
        "--backend",
        "ngc",
        "--ngc-job-template",
        "ngc.template",
        "--ngc-print-only",
        env=env,
        check=True,
    )
    assert "their container must supply it in a PGPASSFILE, ~/.pgpass or PGSERVICE" in printed.stderr
    commands = [shlex.split(line) for line in printed.stdout.splitlines() if line.startswith("ngc batch run")]
    assert len(commands) == 2 and all(f"db={p.bare}" in argv for argv in commands)
    assert shlex.split(commands[0][commands[0].index("--commandline") + 1])[3:8] == [
        "python",
        "-m",
        "jobqueue",
        "worker",
        "--db",
    ]
    p.jq_db(
        "launch",
        "hush",
        "--backend",
        "ngc",
        "--ngc-job-template",
        "ngc.template",
        "--ngc-workers",
        "1",
        env=env,
        check=True,
    )
    (call,) = [json.loads(line) for line in (p.path / "ngc_calls.jsonl").read_text().splitlines()]
    assert f"--db {p.bare} --backend ngc --run hush" in call[call.index("--commandline") + 1]
    (submission,) = json.loads(p.jq_db("sql", "select command from submissions", "--json", check=True).stdout)
    assert p.bare in json.dumps(submission)
    p.assert_password_nowhere()


@pytest.mark.slurm
def test_slurm_workers_get_the_password_from_the_environment_sbatch_passes_on(secret_project, slurm_cluster):
    p = secret_project
    p.sweep("hush", "sh -c 'touch started$1; sleep 3' job", 2)
    env = p.env(**slurm_cluster.env)
    launched = p.jq_db(
        "launch",
        "hush",
        "--backend",
        "slurm",
        "--slurm-workers",
        "1",
        "--slots",
        "2",
        "--slurm-gpus-per-job",
        "0",
        "--slurm-cpus-per-gpu",
        "1",
        "--grace",
        "2",
        env=env,
        check=True,
    )
    assert "submitted an array of 1 workers as Slurm job" in launched.stdout
    try:
        p.wait_for(lambda: len(list(p.path.glob("started*"))) == 2, timeout=120, what="both jobs to start")
        cmdlines = command_lines()
        workers = [line for line in cmdlines.values() if b"\0-m\0jobqueue\0worker\0" in line and b"\0hush\0" in line]
        assert len(workers) == 1 and b"--db" not in workers[0], workers
        p.wait_for(lambda: p.states() == {"succeeded": 2}, timeout=120, what="both jobs to succeed")
    finally:
        slurm_cluster.run("scancel", "--name", "jq-hush", check=False)
    p.wait_for(lambda: not slurm_cluster.squeue(), timeout=30, what="the array to finish")
    assert list((p.path / "slurm").glob("*.out")) and list((p.path / "slurm").glob("*.sh"))
    p.assert_password_nowhere(cmdlines)
