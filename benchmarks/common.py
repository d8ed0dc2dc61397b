"""What the benchmarks share: the `jq` they run, and the environment they run it in."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time


def jq_command() -> list[str]:
    """The `jq` installed beside this Python, else `python -m jobqueue`."""
    exe = shutil.which("jq", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "jobqueue"]


# jq runs as an installed copy does, with its bytecode cached. This project's machines set PYTHONDONTWRITEBYTECODE,
# so every start of the editable install in .venv would compile jobqueue's modules again (about 0.05 s), which
# `pip install` users never pay: jq's processes run without it, after a warm-up run has written the cache.
JQ_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def keep_template_db_in(cwd: str) -> None:
    """jq's processes keep their template DB (jobqueue/template_db.py) in a cache under cwd, not in the user's: the
    first new DB makes it, so a benchmark's warm-up should make a DB."""
    JQ_ENV["XDG_CACHE_HOME"] = os.path.join(cwd, "cache")


def timed(argv, cwd, repeat: int = 1, before=None) -> float:
    """The median wall time of `repeat` runs of a command (its output dropped); before() runs untimed before each."""
    times = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, env=JQ_ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_sweep(cwd: str, module: str, text: str) -> None:
    """The sweep file `module`.py in cwd, for `jq enqueue module` there."""
    with open(os.path.join(cwd, f"{module}.py"), "w") as f:
        f.write(text)
