"""`jq launch` against `xargs -P 8` on the same commands, in one go on this machine.

    python benchmarks/launch_vs_xargs.py [--jobs 1000] [--slots 8] [--rounds 5]

Prints: 1,000 x `true` on 8 slots, jq launch vs xargs -P 8 (and the ratio; target <= 1.5x), and
32 x `sleep 1` on 8 slots (ideal 4 s; target within 0.25 s). Each round runs, one after the other: jq into
a new DB, jq into a DB that already holds another run, xargs, and jq into a new DB with an empty cache (the
first DB a user makes: a wheel copies the template DB it ships, an editable install has the migrations make
one in the cache first; see jobqueue/template_db.py). Beside them, the time to make as many empty files, one
after another, in a new directory: the kernel's share of jq's log files, which xargs does not write, and which
varies with what the disk has been through (see timed()). The summary is the median of the rounds' ratios and
times (this machine's timings vary by 20-50% from one minute to the next). Every jq launch writes its 1,000
logs into a train dir of its own, and every timed run starts after a sync.

The jq timed is the one installed beside the Python that runs this script (common.py): the test venv's
editable install, or a wheel's, e.g. `python3 -m venv /tmp/wv && /tmp/wv/bin/pip install . &&
/tmp/wv/bin/python benchmarks/launch_vs_xargs.py`. It runs as an installed copy that has been used before
does: with its bytecode cached and its template DB at hand, after a warm-up launch in a cache directory of
the benchmark's own.
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command, keep_template_db_in, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("{name}", experiments=[
    Experiment("{name}", {cmd!r}, ParamGrid([("i", list(range({n})))]).generate_params()),
])
"""


# The least a launcher written in Python does that keeps a log per job, as jq does: os.posix_spawn, one log file per
# job, a pidfd per child, 8 at a time; no DB, no threads, no messages. What is left between it and xargs is Python's
# start and per-job cost and the log files; what is left between jq and it is jq's own.
BARE_PYTHON = r"""
import os, select, shlex, sys
commands, slots, logs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(logs)
argvs = [shlex.split(line) for line in open(commands).read().splitlines()]
devnull = os.open(os.devnull, os.O_RDONLY)
poller, running, started, ended = select.poll(), {}, 0, 0
while ended < len(argvs):
    while started < len(argvs) and len(running) < slots:
        log = os.open(os.path.join(logs, f"{started}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        pid = os.posix_spawnp(argvs[started][0], argvs[started], os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)])
        os.close(log)
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
        running[pidfd] = pid
        started += 1
    for pidfd, _ in poller.poll():
        poller.unregister(pidfd)
        os.waitpid(running.pop(pidfd), 0)
        os.close(pidfd)
        ended += 1
"""


def timed(argv, cwd, stdin=None, cache: str | None = None) -> float:
    # Pending writes are flushed first, so that no run pays for the one before it: on this project's machines,
    # creating 1,000 files took 0.02-0.7 s depending on what the disk had pending, and the same launch 1.03 s
    # without a sync before it, 0.76 s with one.
    os.sync()
    start = time.perf_counter()
    subprocess.run(
        argv,
        cwd=cwd,
        input=stdin,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**JQ_ENV, "XDG_CACHE_HOME": cache} if cache else JQ_ENV,
    )
    return time.perf_counter() - start


def make_files(directory: str, n: int) -> float:
    """Seconds to create n empty files in a new directory, as a launch makes its jobs' logs."""
    os.makedirs(directory)
    os.sync()
    start = time.perf_counter()
    for i in range(n):
        os.close(os.open(os.path.join(directory, f"{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
    return time.perf_counter() - start


def sweep_commands(cwd: str, module: str) -> list[str]:
    out = subprocess.run(
        jq_command() + ["enqueue", module, "--dry-run", "--json"], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout
    import json

    return [" ".join(job["argv"][len(shlex.split(job["cmd"].split(" --")[0])) :]) for job in json.loads(out)]


def one(cwd: str, name: str, cmd: str, n: int, slots: int) -> tuple[float, float, float, float, float, float]:
    """(jq launch into a new DB, into a DB that already exists, xargs -P, jq into the first DB with an empty cache,
    making n empty files, the bare Python launcher)."""
    write_sweep(cwd, name, SWEEP.format(name=name, cmd=cmd, n=n))
    launch = jq_command() + ["launch", name, "--max-parallel", str(slots), "--no-progress"]

    def jq_into(db: str, **kwargs) -> float:
        # Each launch writes its jobs' logs into a train dir of its own, as a new sweep does: no launch may find
        # another one's 1,000 log files already made.
        return timed(
            launch + ["--db", os.path.join(cwd, f"{name}_{db}.db"), "--train-dir", os.path.join(cwd, db)], cwd, **kwargs
        )

    fresh = jq_into("new")
    existing_db = os.path.join(cwd, f"{name}_existing.db")
    subprocess.run(
        jq_command() + ["enqueue", "bench_other", "--db", existing_db],
        cwd=cwd,
        check=True,
        capture_output=True,
        env=JQ_ENV,
    )
    existing = jq_into("existing")
    args = "\n".join(sweep_commands(cwd, name)) + "\n"
    program = shlex.split(cmd)
    xargs = timed(["xargs", "-P", str(slots), "-L", "1"] + program, cwd, stdin=args.encode())
    first = jq_into("first", cache=os.path.join(cwd, f"{name}_empty_cache"))
    commands = os.path.join(cwd, f"{name}_commands")
    with open(commands, "w") as f:
        f.writelines(f"{cmd} {line}\n" for line in args.splitlines())
    bare = timed([sys.executable, "-c", BARE_PYTHON, commands, str(slots), os.path.join(cwd, f"{name}_bare")], cwd)
    return fresh, existing, xargs, first, make_files(os.path.join(cwd, f"{name}_files"), n), bare


def rounds(
    cwd: str, name: str, cmd: str, n: int, slots: int, count: int
) -> list[tuple[float, float, float, float, float, float]]:
    """one()'s six times for each of `count` rounds, each round printed as it ends, with its ratios."""
    results = []
    for i in range(count):
        fresh, existing, xargs, first, files, bare = one(cwd, f"{name}{i}", cmd, n, slots)
        print(
            f"  round {i + 1}: jq launch {fresh:.2f} s into a new DB, {existing:.2f} s into an existing one, "
            f"{first:.2f} s into the first DB (empty cache); xargs -P {slots} {xargs:.2f} s "
            f"({fresh / xargs:.2f}x / {existing / xargs:.2f}x / {first / xargs:.2f}x); "
            f"the bare Python launcher {bare:.2f} s ({bare / xargs:.2f}x; jq into a new DB {fresh / bare:.2f}x it); "
            f"{n} empty files made in {files:.2f} s",
            flush=True,
        )
        results.append((fresh, existing, xargs, first, files, bare))
    return results


def median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--sleeps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        write_sweep(cwd, "bench_other", SWEEP.format(name="bench_other", cmd="true", n=1))
        keep_template_db_in(cwd)
        # Warm-up: the first start writes jobqueue's bytecode cache, as `pip install` does at install time, and
        # makes the template DB, as a user's first new DB does.
        timed(jq_command() + ["launch", "bench_other", "--db", os.path.join(cwd, "warm-up.db"), "--no-progress"], cwd)
        print(f"{args.jobs} x true, {args.slots} slots:")
        timings = rounds(cwd, "bench_true", "true", args.jobs, args.slots, args.rounds)
        # Each round's ratio pairs a jq run with the xargs run seconds after it, which this machine's drift spares.
        fresh, existing, xargs, first, files, bare = (median(t[k] for t in timings) for k in range(6))
        print(
            f"  median ratio to xargs -P {args.slots}: {median(t[0] / t[2] for t in timings):.2f}x into a new DB, "
            f"{median(t[1] / t[2] for t in timings):.2f}x into an existing one, "
            f"{median(t[3] / t[2] for t in timings):.2f}x into the first DB (target <= 1.5x); the bare Python "
            f"launcher {median(t[5] / t[2] for t in timings):.2f}x, jq into a new DB "
            f"{median(t[0] / t[5] for t in timings):.2f}x the bare Python launcher; medians: jq "
            f"{fresh:.2f} s / {existing:.2f} s / {first:.2f} s, xargs {xargs:.2f} s, the bare Python launcher "
            f"{bare:.2f} s, {args.jobs} empty files {files:.2f} s; load average {os.getloadavg()[0]:.1f}"
        )
        ideal = args.sleeps / args.slots
        print(f"{args.sleeps} x sleep 1, {args.slots} slots (ideal {ideal:.0f} s):")
        timings = rounds(cwd, "bench_sleep", "sh -c 'sleep 1' sleep", args.sleeps, args.slots, args.rounds)
        fresh, existing, xargs, first, _, bare = (median(t[k] for t in timings) for k in range(6))
        print(
            f"  median: jq launch {fresh:.2f} s (+{fresh - ideal:.2f} s) into a new DB, {existing:.2f} s "
            f"(+{existing - ideal:.2f} s) into an existing one, {first:.2f} s (+{first - ideal:.2f} s) into the "
            f"first DB (target +0.25 s); xargs -P {args.slots} {xargs:.2f} s; the bare Python launcher {bare:.2f} s"
        )


if __name__ == "__main__":
    main()
