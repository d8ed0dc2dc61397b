"""The everyday commands on one big run, through the real CLI, beside the sqlite3 shell doing the same reads.

    python benchmarks/big_run_commands.py [--jobs 40000] [--repeat 3]

Prints the median wall time (Python start-up included) of: enqueue --dry-run, list, sql over every job,
cancel of the run, retry of the run, and cancel naming every job id. For reference, in the same run:
`sqlite3 -column` printing the same rows, and `python -c pass`. No targets; 10,000 jobs is a large sweep,
and every command here should stay within a second or two of the sqlite3 shell at four times that.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command as jq, timed, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("big", experiments=[
    Experiment("e", "python train.py --env=mujoco_ant", ParamGrid([("seed", list(range({n})))]).generate_params()),
])
"""
ROWS = "select id, name, state, cmd from jobs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        write_sweep(cwd, "big", SWEEP.format(n=args.jobs))
        db = ["--db", os.path.join(cwd, "jobqueue.db")]

        def untimed(*argv):
            subprocess.run(jq() + list(argv) + db, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=JQ_ENV)

        untimed("enqueue", "big")
        ids = [str(i) for i in range(1, args.jobs + 1)]
        requeue = functools.partial(untimed, "retry", "big")
        figures = {
            "enqueue --dry-run": timed(jq() + ["enqueue", "big", "--dry-run"], cwd, args.repeat),
            "list": timed(jq() + ["list"] + db, cwd, args.repeat),
            "list --json": timed(jq() + ["list", "--json"] + db, cwd, args.repeat),
            f'sql "{ROWS}"': timed(jq() + ["sql", ROWS] + db, cwd, args.repeat),
            "cancel big": timed(jq() + ["cancel", "big"] + db, cwd, args.repeat, before=requeue),
            "retry big": timed(
                jq() + ["retry", "big"] + db, cwd, args.repeat, before=functools.partial(untimed, "cancel", "big")
            ),
            f"cancel {args.jobs:,} job ids": timed(jq() + ["cancel", *ids] + db, cwd, args.repeat, before=requeue),
        }
        print(f"one run of {args.jobs:,} jobs, median of {args.repeat}:")
        for what, seconds in figures.items():
            print(f"  jq {what}: {seconds:.2f} s")
        if shutil.which("sqlite3"):
            shell = timed(["sqlite3", "-column", "-header", db[1], ROWS], cwd, args.repeat)
            print(f"  reference, sqlite3 -column printing the same rows: {shell:.2f} s")
        print(f"  reference, python -c pass: {timed([sys.executable, '-c', 'pass'], cwd, args.repeat):.3f} s")


if __name__ == "__main__":
    main()
