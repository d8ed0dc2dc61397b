"""Starting, waiting for and stopping a job's processes.

Each job runs in its own process group, so one signal reaches everything it started. A job dies
with its worker through the worker's guard (below), which keeps CPython's fast spawn path: a
parent-death signal would need a preexec_fn (which takes Popen off that path) or a `setpriv` exec in
front of every job, on the worker's busiest path, and would still miss children that left the group.
What still escapes is found by the JQ_ATTEMPT_ID in its environment and killed by the reaper and `jq resume`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from jobqueue.paths import without_password

# The guard: a tiny process (no imports beyond the interpreter's own modules) that a worker starts once and holds
# a pipe to. The pipe closes when the worker dies, however it dies; then the guard SIGKILLs every process (and its
# group) whose environment says it was started by that worker -- children that left their group included, which a
# parent-death signal misses. The worker sends the marks down the pipe as a first line, each ending in a NUL as in
# /proc/PID/environ: a command line can be read by every user of the host. A worker that ends normally writes
# "done" after them. The guard ignores the signals a terminal, scancel --signal or a shutdown send, and sits in its
# own session, so it outlives the worker to do its one job.
# With a deadline (a worker whose DB other hosts share), the worker also writes a line after each heartbeat the
# DB recorded, the seconds since it was sent; with none for `deadline` seconds the guard kills the jobs as if the
# worker had died: a worker hung or frozen (SIGSTOP) cannot run its own fence, and after its lease a reaper on
# another host requeues its jobs, which must not be running still.
_GUARD = r"""
import os, select, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, signal.SIG_IGN)

def kill(marks):
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
            return
        time.sleep(0.05)

fd, deadline = int(sys.argv[1]), float(sys.argv[2])
said, marks, beat = b"", None, time.monotonic()
while True:
    wait = None if marks is None or deadline <= 0 else max(0.0, beat + deadline - time.monotonic())
    if not select.select([fd], [], [], wait)[0]:
        kill(marks)  # no heartbeat for the deadline: the jobs go now, and the guard waits for the worker's next one
        beat = time.monotonic()
        continue
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    *lines, said = (said + chunk).split(b"\n")
    for line in lines:
        if marks is None:
            marks = set(line.split(b"\0")) - {b""}
        elif line == b"done":
            sys.exit(0)
        else:
            beat = time.monotonic() - float(line)
if marks:  # none: the worker died before it could start a job
    kill(marks)
"""


class Guard:
    """Kills a worker's jobs when the worker dies, or with a deadline when it has sent no heartbeat for that long.
    Every job must carry `marks` (KEY=value) in its environment."""

    def __init__(self, marks: dict[str, str], deadline: float = 0.0, beat_age: float = 0.0):
        read_end, self._write_end = os.pipe()
        try:
            # close_fds (the default) keeps the write end out of the guard and out of every job: only the worker holds it.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD, str(read_end), repr(deadline)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        # Far below a pipe's buffer, so this never waits for the guard to read.
        os.write(self._write_end, b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in marks.items()) + b"\n")
        os.set_blocking(self._write_end, False)  # a guard that stopped reading must not stop the heartbeat
        self.beat(beat_age)

    def beat(self, age: float) -> None:
        """The DB recorded a heartbeat sent `age` seconds ago."""
        try:
            os.write(self._write_end, f"{age:.3f}\n".encode())
        except OSError:
            pass  # the guard is gone, or its pipe is full: it kills at its deadline, as it should

    def stand_down(self) -> None:
        """The worker is ending normally, its jobs are over: the guard leaves without killing anything.

        Not waited for: it reads "done" from the pipe whenever it gets there (a quick run ends before the guard's
        interpreter has even started), and subprocess reaps it later, or init once we have exited."""
        try:
            os.write(self._write_end, b"done\n")
        except OSError:
            pass  # the guard is gone already
        os.close(self._write_end)


@dataclass
class JobProcess:
    """A started job: its process (the leader of its group) and a pidfd that becomes readable when it exits."""

    pid: int
    pidfd: int
    popen: subprocess.Popen | None = None  # Popen's, which reaps its own child

    def reap(self) -> int:
        """The exited leader's return code as Popen gives it (-N: killed by signal N); closes the pidfd."""
        os.close(self.pidfd)
        if self.popen is not None:
            return self.popen.wait()
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def start_job(
    argv: list[str], executable: str | None, cwd: str, env: dict[bytes, bytes], log: int, stdin: int
) -> JobProcess:
    """Start a job in its own process group, in `cwd`, its input from the descriptor `stdin` (the worker's
    /dev/null, opened once), its output into the descriptor `log`, with none of the worker's other descriptors and
    SIGPIPE and SIGXFSZ back to their defaults (Python ignores both, and an ignored signal survives exec).

    posix_spawn(3) through ctypes where the C library has what it takes (glibc 2.34 and later), else Popen. Both let
    go of the GIL while the child execs, which takes longer than the rest of a quick job's start: the worker's loop
    goes on meanwhile. os.posix_spawn holds the GIL throughout (docs/performance.md has the figures)."""
    spawn = _posix_spawn()
    if spawn is None or min(log, stdin) < 3:  # Popen also copes with a worker whose fds 0-2 were closed
        proc = spawn_job(argv, executable, cwd, env, log, stdin)
        return JobProcess(proc.pid, os.pidfd_open(proc.pid), proc)
    pid = spawn.start(os.fsencode(executable or argv[0]), argv, env, cwd, log, stdin)
    return JobProcess(pid, os.pidfd_open(pid))


def spawn_job(
    argv: list[str], executable: str | None, cwd: str, env: dict[bytes, bytes], log: int, stdin: int
) -> subprocess.Popen:
    """start_job()'s way where posix_spawn(3) lacks what a job needs: Popen, in its own process group."""
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


_SPAWN_SETPGROUP, _SPAWN_SETSIGDEF = 0x02, 0x04  # <spawn.h>, the same in glibc and musl
_OPAQUE = 1024  # bytes for posix_spawnattr_t, posix_spawn_file_actions_t, sigset_t: more than any libc's


class _LibcSpawn:
    """posix_spawn(3) through ctypes, which releases the GIL for the length of a foreign call. Raises AttributeError
    where the C library lacks chdir or closefrom file actions (glibc before 2.34, musl)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.spawn = libc.posix_spawn
        pointer = ctypes.c_void_p
        self.spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, pointer, pointer, pointer, pointer]
        self.actions_init = libc.posix_spawn_file_actions_init
        self.actions_destroy = libc.posix_spawn_file_actions_destroy
        self.add_dup2 = libc.posix_spawn_file_actions_adddup2
        self.add_chdir = libc.posix_spawn_file_actions_addchdir_np
        self.add_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.add_closefrom = libc.posix_spawn_file_actions_addclosefrom_np
        # One set of attributes for every job: its own process group, SIGPIPE and SIGXFSZ back to their defaults.
        self.attributes = ctypes.create_string_buffer(_OPAQUE)
        default = ctypes.create_string_buffer(_OPAQUE)
        libc.posix_spawnattr_init(self.attributes)
        libc.sigemptyset(default)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            libc.sigaddset(default, int(sig))
        libc.posix_spawnattr_setsigdefault(self.attributes, default)
        libc.posix_spawnattr_setpgroup(self.attributes, 0)
        libc.posix_spawnattr_setflags(self.attributes, ctypes.c_short(_SPAWN_SETPGROUP | _SPAWN_SETSIGDEF))

    def start(self, path: bytes, argv: list[str], env: dict[bytes, bytes], cwd: str, log: int, stdin: int) -> int:
        actions = ctypes.create_string_buffer(_OPAQUE)
        self.actions_init(actions)
        try:
            for fd, target in ((stdin, 0), (log, 1), (log, 2)):
                self.add_dup2(actions, fd, target)
            self.add_chdir(actions, os.fsencode(cwd))
            self.add_closefrom(actions, 3)  # as Popen's close_fds: not even what the worker inherited reaches a job
            c_argv = (ctypes.c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
            c_env = (ctypes.c_char_p * (len(env) + 1))(*[k + b"=" + v for k, v in env.items()], None)
            pid = ctypes.c_int()
            error = self.spawn(ctypes.byref(pid), path, actions, self.attributes, c_argv, c_env)
        finally:
            self.actions_destroy(actions)
        if error:  # posix_spawn returns the error (the exec's included) rather than setting errno
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return pid.value


@functools.cache  # made at first use, once
def _posix_spawn() -> _LibcSpawn | None:
    try:
        return _LibcSpawn()
    except (AttributeError, OSError):
        return None


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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
    """Fault injection for the crash tests: with JQ_CRASH_AT=name, SIGKILL this process right here; with
    JQ_CRASH_AT=name:raise, raise an exception here, as a bug would."""
    if _CRASH_AT is None:
        return
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if _CRASH_AT == f"{name}:raise":
        raise RuntimeError(f"fault injected at {name} (JQ_CRASH_AT)")
