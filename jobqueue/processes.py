"""Starting, waiting for and stopping a job's processes.

Each job runs in its own process group, so one signal reaches everything it started. A job dies
with its worker through the worker's guard (below), which keeps CPython's fast spawn path: a
parent-death signal would need a preexec_fn (which takes Popen off that path) or a `setpriv` exec in
front of every job, on the worker's busiest path, and would still miss children that left the group.
What still escapes is found by the JQ_ATTEMPT_ID in its environment and killed by the reaper and `jq resume`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from jobqueue.paths import without_password

# The guard: a tiny process (no imports) that a worker starts once and holds a pipe to. The pipe closes when the
# worker dies, however it dies; then the guard SIGKILLs every process (and its group) whose environment says it
# was started by that worker -- children that left their group included, which a parent-death signal misses.
# The worker sends the marks down the pipe, each ending in a NUL as in /proc/PID/environ: a command line can be
# read by every user of the host, and JQ_DB may hold a password. A worker that ends normally writes "done" after
# them. The guard ignores the signals a terminal, scancel --signal or a shutdown send, and sits in its own
# session, so it outlives the worker to do its one job.
_GUARD = r"""
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, signal.SIG_IGN)
fd = int(sys.argv[1])
said = b""
while True:
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    said += chunk
*marks, last = said.split(b"\0")
marks = set(marks)
if last == b"done" or not marks:  # no marks: the worker died before it could start a job
    sys.exit(0)
for _ in range(20):
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if marks <= env:
            found += 1
            try:
                os.killpg(os.getpgid(int(name)), signal.SIGKILL)
            except OSError:
                pass
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
    if not found:
        break
    time.sleep(0.05)
"""


class Guard:
    """Kills a worker's jobs when the worker dies. Every job must carry `marks` (KEY=value) in its environment."""

    def __init__(self, marks: dict[str, str]):
        read_end, self._write_end = os.pipe()
        try:
            # close_fds (the default) keeps the write end out of the guard and out of every job: only the worker holds it.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD, str(read_end)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        # Far below a pipe's buffer, so this never waits for the guard to read.
        os.write(self._write_end, b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in marks.items()))

    def stand_down(self) -> None:
        """The worker is ending normally, its jobs are over: the guard leaves without killing anything.

        Not waited for: it reads "done" from the pipe whenever it gets there (a quick run ends before the guard's
        interpreter has even started), and subprocess reaps it later, or init once we have exited."""
        try:
            os.write(self._write_end, b"done")
        except OSError:
            pass  # the guard is gone already
        os.close(self._write_end)


def spawn_job(
    argv: list[str], executable: str | None, cwd: str, env: dict[bytes, bytes], log: int, stdin: int
) -> subprocess.Popen:
    """Start a job in its own process group, its input from the descriptor `stdin` (the worker's /dev/null, opened
    once rather than by Popen for every job), its output into the descriptor `log`.

    Popen, not os.posix_spawn: posix_spawn takes less of the worker's CPU per job, but it holds the GIL until the
    child has exec'd, where Popen (CPython 3.11.4 and later) lets go of it, so the other slot threads keep
    claiming and recording while a job starts (docs/performance.md has the figures)."""
    return subprocess.Popen(
        argv,
        executable=executable,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_exit(pidfd: int, timeout: float | None, wake_fd: int | None = None) -> str:
    """Block until the process exits ('exited'), wake_fd is readable ('woken') or the timeout passes ('timeout')."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if wake_fd is not None:
        poller.register(wake_fd, select.POLLIN)
    events = poller.poll(None if timeout is None else max(0, timeout) * 1000)
    fds = {fd for fd, _ in events}
    if pidfd in fds:
        return "exited"
    return "woken" if fds else "timeout"


def stop_group(pidfd: int, pgid: int, grace: float) -> bool:
    """TERM the group, wait up to `grace` for its leader, then KILL the group. True if it needed KILL."""
    signal_group(pgid, signal.SIGTERM)
    if wait_exit(pidfd, grace) == "exited":
        signal_group(pgid, signal.SIGKILL)  # whatever the leader left behind in its group
        return False
    signal_group(pgid, signal.SIGKILL)
    wait_exit(pidfd, 10)
    return True


def all_job_processes(db_url: str) -> dict[int, list]:
    """Every live process on this host started by a worker of this DB, by attempt id."""
    import psutil

    # Jobs carry the URL without its password; those of a worker before 2026-12-02 carry it whole.
    marks = {without_password(db_url), db_url}
    found: dict[int, list] = {}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("JQ_DB") not in marks or "JQ_ATTEMPT_ID" not in env or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        found.setdefault(int(env["JQ_ATTEMPT_ID"]), []).append(proc)
    return found


def attempt_processes(attempt_ids: set[int], db_url: str) -> list:
    """This host's live processes started for these attempts of this DB."""
    found = all_job_processes(db_url)
    return [proc for attempt_id in attempt_ids for proc in found.get(attempt_id, [])]


def kill_processes(procs: list, timeout: float = 10.0) -> int:
    """SIGKILL these processes and their groups; wait until they are gone. Returns how many there were."""
    import psutil

    for proc in procs:
        try:
            signal_group(os.getpgid(proc.pid), signal.SIGKILL)
            proc.kill()
        except (psutil.Error, OSError):
            pass
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.05)
    return len(procs)


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_CRASH_AT = os.environ.get("JQ_CRASH_AT")  # read once: crash_point() is on every job's path


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: with JQ_CRASH_AT=name, SIGKILL this process right here."""
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
