"""Enqueue a 100,000-job grid and read `jq status` on a 1,000,000-job DB, through the real CLI.

    python benchmarks/enqueue_and_status.py [--jobs 100000] [--big 1000000]

Targets: enqueue under 3 s; status under 0.2 s. Prints the wall time of the whole command (Python
start-up included) and, for reference, a bare `python -c pass` on this machine. jq runs as an installed
copy that has been used before does (see common.py): a warm-up command first caches its bytecode and makes
its template DB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import JQ_ENV, jq_command as jq, keep_template_db_in, timed, write_sweep  # noqa: E402

SWEEP = """
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription("{name}", experiments=[
    Experiment("e", "python train.py", ParamGrid([("seed", list(range({seeds}))), ("lr", list(range(100)))]).generate_params()),
])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        write_sweep(cwd, "grid", SWEEP.format(name="grid", seeds=args.jobs // 100))
        write_sweep(cwd, "tiny", SWEEP.format(name="tiny", seeds=1))
        keep_template_db_in(cwd)
        # Warm-up: writes the bytecode cache, and makes the template DB that new DBs are copied from.
        timed(jq() + ["enqueue", "tiny", "--db", "warm-up.db"], cwd)
        fresh = timed(jq() + ["enqueue", "grid", "--db", "fresh.db"], cwd)
        again = timed(jq() + ["enqueue", "grid", "--db", "fresh.db"], cwd)
        print(
            f"enqueue {args.jobs:,} jobs into a new DB: {fresh:.2f} s (target < 3 s); again, adding nothing: {again:.2f} s"
        )

        db = os.path.join(cwd, "big.db")
        for i in range(args.big // args.jobs):
            write_sweep(cwd, f"part{i}", SWEEP.format(name=f"part{i}", seeds=args.jobs // 100))
            subprocess.run(
                jq() + ["enqueue", f"part{i}", "--db", db], cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=JQ_ENV
            )
        status = timed(jq() + ["status", "--db", db], cwd, repeat=5)
        status_json = timed(jq() + ["status", "--json", "--db", db], cwd, repeat=5)
        bare = timed([sys.executable, "-c", "pass"], cwd, repeat=5)
        print(
            f"jq status on {args.big:,} jobs: {status:.3f} s, --json {status_json:.3f} s (target < 0.2 s); "
            f"python -c pass alone: {bare:.3f} s"
        )


if __name__ == "__main__":
    main()
