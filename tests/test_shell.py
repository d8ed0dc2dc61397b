"""jobqueue in a researcher's shell: `jq` next to the JSON processor of the same name, a closed terminal,
and completion of run names, job ids and states."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from jobqueue.paths import resolve_url
from jobqueue.processes import all_job_processes
from tests.conftest import service_unavailable

VENV_BIN = Path(sys.executable).parent
JQ = VENV_BIN / "jq"  # the installed entry point, as a shell finds it
JSON_JQ = Path("/usr/bin/jq")  # Debian's, installed by tests/setup.sh


@pytest.fixture
def shell(tmp_path) -> dict:
    """A shell's environment with jobqueue's venv activated in front of the system's JSON jq."""
    if not JQ.exists():
        pytest.fail(f"{JQ} is missing: install jobqueue into the venv (tests/setup.sh)")
    if not JSON_JQ.exists():
        service_unavailable("Debian's jq", f"{JSON_JQ} is missing: tests/setup.sh installs it")
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"}


def run(
    program, *args: str, env: dict, cwd=None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(program), *args], env=env, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout
    )


# --- jq and the JSON jq ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, stdin",
    [
        ([".a"], '{"a": [1, "x"]}'),
        (["-r", ".a"], '{"a": "raw text"}'),
        (["-n", "1+1"], None),
        (["-n", "--arg", "x", "1", "$x"], None),
        (["map(.x)"], '[{"x": 1}, {"x": 2}]'),
        (["-c", ".", "data.json"], None),
        (["-e", ".missing"], "{}"),
        ([".a |||"], "{}"),
        ([".a"], "not json"),
        (["--version"], None),
    ],
)
def test_what_is_not_a_jobqueue_command_is_the_json_jqs_exactly(shell, tmp_path, args, stdin):
    (tmp_path / "data.json").write_text('{"from": "a file"}\n[1, 2]\n')
    ours = run(JQ, *args, env=shell, cwd=tmp_path, input=stdin)
    theirs = run(JSON_JQ, *args, env=shell, cwd=tmp_path, input=stdin)
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert ours.stdout or ours.stderr  # the case shows something: an empty comparison would prove nothing


def test_the_json_jqs_exit_codes_come_through(shell):
    assert run(JQ, "-e", ".missing", env=shell, input="{}").returncode == 1
    assert run(JQ, ".a |||", env=shell, input="{}").returncode == 3


def test_a_reader_that_stops_early_ends_the_json_jq_as_it_would_alone(shell):
    # `jq ... | head -1`: the JSON jq dies of SIGPIPE quietly, not with "Broken pipe" errors.
    for program in (JSON_JQ, JQ):
        proc = subprocess.Popen(
            [str(program), "-n", "range(1000000)"], env=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout.readline() == b"0\n"
        proc.stdout.close()
        assert (proc.wait(30), proc.stderr.read()) == (-signal.SIGPIPE, b""), program


def test_a_symlink_to_jq_or_another_installs_jq_earlier_on_path_is_skipped(shell, tmp_path):
    linked, copied = tmp_path / "linked", tmp_path / "other-venv"
    linked.mkdir()
    copied.mkdir()
    (linked / "jq").symlink_to(JQ)
    (copied / "jq").write_bytes(JQ.read_bytes())
    (copied / "jq").chmod(0o755)
    env = {**shell, "PATH": os.pathsep.join([str(linked), str(copied), str(VENV_BIN), "/usr/bin", "/bin"])}
    assert run(linked / "jq", "-n", "[1,2] | add", env=env, timeout=15).stdout == "3\n"
    # Two installs with no JSON jq after them must not hand the call back and forth for ever.
    env["PATH"] = os.pathsep.join([str(linked), str(copied), str(VENV_BIN)])
    assert run(copied / "jq", "-n", "1", env=env, timeout=15).returncode == 2


def test_with_no_other_jq_on_path_a_filter_is_one_clear_line(shell):
    proc = run(JQ, ".a", env={**shell, "PATH": str(VENV_BIN)}, input="{}")
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("jq: error:") and "'.a'" in line and "jq --help" in line


def test_jobqueues_own_commands_help_and_alias_stay_jobqueues(shell, tmp_path):
    bare = run(JQ, env=shell, cwd=tmp_path)
    assert "Usage: jq [OPTIONS] COMMAND" in bare.stdout + bare.stderr
    assert "Jobs per state" in run(JQ, "status", "--help", env=shell).stdout
    for flag in ("--help", "-h"):
        helped = run(JQ, flag, env=shell)
        assert helped.returncode == 0
        assert "JSON processor" in helped.stdout and "next `jq` on PATH" in " ".join(helped.stdout.split())
    alias = run(VENV_BIN / "jobqueue", ".a", env=shell, input="{}")
    assert alias.returncode == 2 and "No such command '.a'" in alias.stderr
    module = subprocess.run([sys.executable, "-m", "jobqueue", ".a"], env=shell, capture_output=True, text=True)
    assert module.returncode == 2 and "No such command '.a'" in module.stderr


def test_the_pass_through_knows_every_command_and_global_option_of_the_app():
    import typer.main

    from jobqueue import passthrough
    from jobqueue.cli import app

    commands = {c.name or typer.main.get_command_name(c.callback.__name__) for c in app.registered_commands}
    commands |= {g.name for g in app.registered_groups}
    assert passthrough.COMMANDS == commands
    group = typer.main.get_command(app)
    options = {opt for param in group.params for opt in param.opts + param.secondary_opts}
    options |= set(group.context_settings["help_option_names"])
    assert passthrough.GLOBAL_OPTIONS == options


# --- a closed terminal ------------------------------------------------------------------------------

# Twenty seconds on the first attempt, at once on the next: a resume shows that the jobs were handed back.
SLOW_FIRST_TIME = """sh -c 'if [ "$JQ_ATTEMPT" = 1 ]; then sleep 20; fi' job"""


def test_sighup_to_a_foreground_launch_hands_its_jobs_back_and_resume_finishes_them(sqlite_project):
    p = sqlite_project
    p.sweep("hup", SLOW_FIRST_TIME, 4)
    launch = p.start("launch", "hup", "--max-parallel", "4", "--no-progress")
    url = resolve_url(p.db)
    p.wait_for(lambda: len(all_job_processes(url)) == 4, what="four running jobs", diagnose=lambda: p.states())
    time.sleep(1)
    launch.send_signal(signal.SIGHUP)  # what ssh's end sends when the laptop's lid closes
    out, err = launch.communicate(timeout=30)
    assert launch.returncode == 128 + signal.SIGHUP, err
    assert "`jq resume hup`" in out
    assert_handed_back_then_resumed(p, "hup")


def test_a_launch_whose_terminal_goes_away_hands_its_jobs_back(sqlite_project):
    """The real thing: the launch runs on a terminal of its own, with its progress view, and the terminal is
    closed. Every write to it fails from then on; the jobs must still be handed back, not left running."""
    p = sqlite_project
    p.sweep("lid", SLOW_FIRST_TIME, 4)
    master, terminal = os.openpty()

    def on_the_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    launch = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "launch", "lid", "--max-parallel", "4"],
        cwd=p.path,
        env=p.env(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=on_the_terminal,
    )
    os.close(terminal)
    shown, hang_up = [], threading.Event()
    reader = threading.Thread(target=_read_until_hung_up, args=(master, shown, hang_up), daemon=True)
    reader.start()
    url = resolve_url(p.db)
    p.wait_for(lambda: len(all_job_processes(url)) == 4, what="four running jobs", diagnose=lambda: b"".join(shown))
    time.sleep(1)
    hang_up.set()
    reader.join()
    os.close(master)  # the ssh connection drops: the kernel hangs up the terminal and sends SIGHUP
    assert launch.wait(30) == 128 + signal.SIGHUP
    assert_handed_back_then_resumed(p, "lid")


def assert_handed_back_then_resumed(p, run: str) -> None:
    """The four jobs were stopped and handed back with the reason, none of their processes is left, and a resume
    finishes them."""
    assert (
        p.sql("select state, reason from attempts")
        == [{"state": "interrupted", "reason": "worker stopped by SIGHUP"}] * 4
    )
    assert all_job_processes(resolve_url(p.db)) == {}
    assert p.states() == {"queued": 4}
    p.jq("resume", run, "--no-progress", check=True)
    assert p.states() == {"succeeded": 4}


def _read_until_hung_up(fd: int, into: list, hang_up: threading.Event) -> None:
    # A read blocked on the terminal would keep it open past os.close(): poll, and stop when told.
    while not hang_up.is_set():
        if select.select([fd], [], [], 0.1)[0]:
            try:
                into.append(os.read(fd, 65536))
            except OSError:
                return


# --- completion --------------------------------------------------------------------------------------


def complete(project, words: str, shell: str = "bash", env: dict | None = None) -> subprocess.CompletedProcess:
    """What `jq` offers when TAB is pressed at the end of `words`, through typer's completion protocol."""
    protocol = {"_JQ_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        protocol |= {"COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    else:
        protocol |= {"_TYPER_COMPLETE_ARGS": words}
    proc = run(JQ, env={**(env or project.env()), **protocol}, cwd=project.path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    return proc


def offered(project, words: str, **kwargs) -> list[str]:
    return complete(project, words, **kwargs).stdout.split()


def test_tab_completes_run_names_job_ids_with_their_names_and_states_from_the_db(project):
    p = project
    for run, n in (("alpha_run", 3), ("alpine", 12), ("beta", 60)):
        p.sweep(run, "true", n)
        p.jq("enqueue", run, check=True)
    assert offered(p, "jq status al") == ["alpha_run", "alpine"]
    assert offered(p, "jq status ") == ["alpha_run", "alpine", "beta"]
    assert offered(p, "jq list --state f") == ["failed"]
    assert offered(p, "jq list --run b") == ["beta"]
    # Job ids: newest first, one line each in bash; zsh shows each one's name, state and run.
    assert offered(p, "jq logs 1") == ["19", "18", "17", "16", "15", "14", "13", "12", "11", "10", "1"]
    assert offered(p, "jq logs 7") == ["75", "74", "73", "72", "71", "70", "7"]
    assert offered(p, "jq logs 0") == offered(p, "jq logs x") == []
    assert len(offered(p, "jq logs ")) == 50  # 75 jobs: the newest 50
    zsh = complete(p, "jq logs 15", shell="zsh").stdout
    assert '"15":"11_j_i_11 (queued, run alpine)"' in zsh  # alpine's jobs are 4 to 15


def test_completion_reads_the_db_named_on_the_command_line_and_is_silent_without_one(sqlite_project, tmp_path):
    p = sqlite_project
    p.sweep("mine", "true", 1)
    p.jq("enqueue", "mine", "--db", "other.db", check=True)
    assert offered(p, "jq status ") == []  # $JQ_DB names a DB that does not exist: nothing, and nothing made
    assert not Path(p.db).exists()
    assert offered(p, "jq status --db other.db ") == ["mine"]
    assert offered(p, "jq list --db other.db --run m") == ["mine"]
    (p.path / "damaged.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    assert offered(p, "jq logs --db damaged.db ") == []
    assert offered(p, "jq list --state ") == ["queued", "running", "succeeded", "failed", "timeout", "cancelled"]


def test_a_run_name_or_job_ids_argument_completes_ids_once_a_digit_is_typed(sqlite_project):
    # For `jq cancel` and `jq retry`, called as typer calls it, with the context of the command line being completed.
    import typer.main

    from jobqueue import completion
    from jobqueue.cli import app

    p = sqlite_project
    p.sweep("gamma", "true", 12)
    p.jq("enqueue", "gamma", check=True)
    status = typer.main.get_command(app).get_command(None, "status")
    ctx = status.make_context("status", ["--db", p.db], resilient_parsing=True)
    assert completion.runs_or_job_ids(ctx, "") == completion.runs_or_job_ids(ctx, "g") == ["gamma"]
    assert [job_id for job_id, _ in completion.runs_or_job_ids(ctx, "1")] == ["12", "11", "10", "1"]
