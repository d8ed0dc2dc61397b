"""The training process's side of metrics: log_metrics appends a JSON line to the file the worker reads.

Imported by training scripts (`from jobqueue import log_metrics`), so it imports next to nothing; the worker's
reader of these files is jobqueue/metrics.py.
"""

import os
import sys
import time

METRICS_FILE_ENV = "JQ_METRICS_FILE"
MAX_KEY = 200  # characters: the readers refuse longer keys, as the summary table's key column holds 200

_warned_unset = False


def log_metrics(step: int | None = None, **values: float) -> None:
    """Append one line, e.g. {"step": 100, "reward": 12.5, "wall_time": 1764000000.0}, to $JQ_METRICS_FILE.

    A jq worker sets $JQ_METRICS_FILE for every job and stores what the file holds in its DB; outside a
    worker this does nothing (and says so once). Values are numbers, anything float() takes (a torch or
    numpy scalar too); NaN and ±inf are kept."""
    global _warned_unset
    path = os.environ.get(METRICS_FILE_ENV)
    if not path:
        if not _warned_unset:
            _warned_unset = True
            print(
                f"jobqueue.log_metrics: ${METRICS_FILE_ENV} is not set (not run by a jq worker): "
                "metrics are not recorded",
                file=sys.stderr,
            )
        return
    line: dict = {} if step is None else {"step": _integer_step(step)}
    for key, value in values.items():
        if len(key) > MAX_KEY:
            raise ValueError(f"log_metrics: key {key[:40]!r}... is longer than {MAX_KEY} characters")
        if isinstance(value, (bool, str, bytes)):
            raise TypeError(f"log_metrics: {key}={value!r} is not a number")
        line[key] = float(value)
    line.setdefault("wall_time", time.time())
    import json  # at the first call, not at import: a script that never logs pays nothing

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())  # one write: a reader never sees half a line from us
    finally:
        os.close(fd)


def _integer_step(step) -> int:
    try:
        return step.__index__()  # operator.index() without importing it: ints, numpy's and torch's integers; not 1.5
    except AttributeError:
        raise TypeError(f"log_metrics: step={step!r} is not an integer") from None
