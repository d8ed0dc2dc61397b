"""A sweep that really runs on a laptop in seconds: 3 seeds x 2 learning rates of a tiny training script.

jq launch experiments.quickstart --max-parallel 4
"""

from jobqueue import Experiment, ParamGrid, RunDescription

_params = ParamGrid(
    [
        ("seed", [0, 1, 2]),
        ("lr", [0.01, 0.1]),
    ]
)

_experiments = [
    Experiment(
        "tiny",
        "python experiments/train_tiny.py --steps=200",
        _params.generate_params(randomize=False),
    ),
]

RUN_DESCRIPTION = RunDescription("quickstart", experiments=_experiments)
