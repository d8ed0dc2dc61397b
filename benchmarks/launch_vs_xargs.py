"""`jq launch` against `xargs -P 8` on the same commands, in one go on this machine.

    python benchmarks/launch_vs_xargs.py [--jobs 1000] [--slots 8] [--rounds 5]

Prints: 1,000 x `true` on 8 slots, jq launch vs xargs -P 8 (and the ratio; target <= 2x), and
32 x `sleep 1` on 8 slots (ideal 4 s; target within 0.25 s). Each round runs jq into a new DB, jq into
a DB that already holds another run, and xargs, one after the other; the summary is the median of the
rounds' ratios and times (this machine's timings vary by 20-50% from one minute to the next). Every jq
launch writes its 1,000 logs into a train dir of its own, and every timed run starts after a sync.

jq runs as an installed copy does, with its bytecode cached (see common.py): a warm-up launch first.
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
from benchmarks.common import JQ_ENV, jq_command, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("{name}", experiments=[
    Experiment("{name}", {cmd!r}, ParamGrid([("i", list(range({n})))]).generate_params()),
])
"""


def timed(argv, cwd, stdin=None) -> float:
    # Pending writes are flushed first, so that no run pays for the one before it: on this project's machines,
    # creating 1,000 files took 0.02-0.7 s depending on what the disk had pending, and the same launch 1.03 s
    # without a sync before it, 0.76 s with one.
    os.sync()
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, input=stdin, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=JQ_ENV)
    return time.perf_counter() - start


def sweep_commands(cwd: str, module: str) -> list[str]:
    out = subprocess.run(jq_command() + ["enqueue", module, "--dry-run", "--json"], cwd=cwd, check=True,
                         capture_output=True, text=True).stdout
    import json

    return [" ".join(job["argv"][len(shlex.split(job["cmd"].split(" --")[0])):]) for job in json.loads(out)]


def one(cwd: str, name: str, cmd: str, n: int, slots: int) -> tuple[float, float, float]:
    """(jq launch into a new DB, jq launch into a DB that already exists, xargs -P)."""
    write_sweep(cwd, name, SWEEP.format(name=name, cmd=cmd, n=n))
    launch = jq_command() + ["launch", name, "--max-parallel", str(slots), "--no-progress"]
    # Each launch writes its jobs' logs into a train dir of its own, as a new sweep does: the second launch
    # must not find the first one's 1,000 log files already made.
    fresh = timed(launch + ["--db", os.path.join(cwd, f"{name}.db"), "--train-dir", os.path.join(cwd, "new-db")], cwd)
    existing_db = os.path.join(cwd, f"{name}_existing.db")
    subprocess.run(jq_command() + ["enqueue", "bench_other", "--db", existing_db], cwd=cwd, check=True, capture_output=True)
    existing = timed(launch + ["--db", existing_db, "--train-dir", os.path.join(cwd, "existing-db")], cwd)
    args = "\n".join(sweep_commands(cwd, name)) + "\n"
    program = shlex.split(cmd)
    xargs = timed(["xargs", "-P", str(slots), "-L", "1"] + program, cwd, stdin=args.encode())
    return fresh, existing, xargs


def rounds(cwd: str, name: str, cmd: str, n: int, slots: int, count: int) -> list[tuple[float, float, float]]:
    """(new DB, existing DB, xargs) for each of `count` rounds, each round printed as it ends, with its ratios."""
    results = []
    for i in range(count):
        fresh, existing, xargs = one(cwd, f"{name}{i}", cmd, n, slots)
        print(f"  round {i + 1}: jq launch {fresh:.2f} s into a new DB, {existing:.2f} s into an existing one; "
              f"xargs -P {slots} {xargs:.2f} s ({fresh / xargs:.2f}x / {existing / xargs:.2f}x)", flush=True)
        results.append((fresh, existing, xargs))
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
        # Warm-up: the first start writes jobqueue's bytecode cache, as `pip install` does at install time.
        timed(jq_command() + ["launch", "bench_other", "--db", os.path.join(cwd, "warm-up.db"), "--no-progress"], cwd)
        print(f"{args.jobs} x true, {args.slots} slots:")
        timings = rounds(cwd, "bench_true", "true", args.jobs, args.slots, args.rounds)
        # Each round's ratio pairs a jq run with the xargs run seconds after it, which this machine's drift spares.
        print(f"  median ratio to xargs -P {args.slots}: {median(f / x for f, _, x in timings):.2f}x into a new DB, "
              f"{median(e / x for _, e, x in timings):.2f}x into an existing one (target <= 2x); medians: jq "
              f"{median(f for f, _, _ in timings):.2f} s / {median(e for _, e, _ in timings):.2f} s, xargs "
              f"{median(x for _, _, x in timings):.2f} s")
        ideal = args.sleeps / args.slots
        print(f"{args.sleeps} x sleep 1, {args.slots} slots (ideal {ideal:.0f} s):")
        timings = rounds(cwd, "bench_sleep", "sh -c 'sleep 1' sleep", args.sleeps, args.slots, args.rounds)
        fresh, existing, xargs = (median(t[k] for t in timings) for k in range(3))
        print(f"  median: jq launch {fresh:.2f} s (+{fresh - ideal:.2f} s) into a new DB, {existing:.2f} s "
              f"(+{existing - ideal:.2f} s) into an existing one (target +0.25 s); xargs -P {args.slots} {xargs:.2f} s")


if __name__ == "__main__":
    main()
