"""jobqueue: a persistent experiment launcher for ML sweeps.

The sweep API is Sample Factory's: describe a sweep with these objects in a Python file and give it
a module-level RUN_DESCRIPTION. Training scripts report numbers with log_metrics; notebooks read a queue with
open_queue (jobqueue/api.py).
"""

TYPE_CHECKING = False  # not typing's: importing typing would cost `jq .a` more than the rest of its start-up
if TYPE_CHECKING:
    from jobqueue.api import open_queue
    from jobqueue.sweep import Experiment, ParamGrid, ParamList, RunDescription, seeds
    from jobqueue.training import log_metrics

__all__ = ["Experiment", "ParamGrid", "ParamList", "RunDescription", "log_metrics", "open_queue", "seeds"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: `jq .a` hands over to the JSON jq (jobqueue/passthrough.py) before paying for it.
    if name == "log_metrics":  # for training scripts: its module imports next to nothing
        from jobqueue.training import log_metrics

        return log_metrics
    if name == "open_queue":
        from jobqueue.api import open_queue

        return open_queue
    if name in __all__:
        from jobqueue import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'jobqueue' has no attribute {name!r}")
