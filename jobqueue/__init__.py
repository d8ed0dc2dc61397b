"""jobqueue: a persistent experiment launcher for ML sweeps.

The sweep API is Sample Factory's: describe a sweep with these objects in a Python file and give it
a module-level RUN_DESCRIPTION.
"""

from jobqueue.sweep import Experiment, ParamGrid, ParamList, RunDescription, seeds

__all__ = ["Experiment", "ParamGrid", "ParamList", "RunDescription", "seeds"]
__version__ = "0.1.0"
