"""Starting, waiting for and stopping a job's processes.

Each job runs in its own process group, so one signal reaches everything it started. A job dies
with its worker through a parent-death signal (`setpriv --pdeathsig KILL`, which keeps CPython's
fast spawn path, unlike a preexec_fn). What still escapes is found by the JQ_ATTEMPT_ID in its
environment and killed by the reaper and `jq resume`.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time

SETPRIV = shutil.which("setpriv")
PDEATHSIG_PREFIX = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []


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

    found: dict[int, list] = {}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("JQ_DB") != db_url or "JQ_ATTEMPT_ID" not in env or proc.status() == psutil.STATUS_ZOMBIE:
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


def crash_point(name: str) -> None:
    """Fault injection for the crash tests: with JQ_CRASH_AT=name, SIGKILL this process right here."""
    if os.environ.get("JQ_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
