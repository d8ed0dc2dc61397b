"""Sample Factory's own CartPole training, 2 seeds x 2 learning rates, written as a Sample Factory sweep.

Runs on a laptop's CPU in a few minutes, in a venv with sample-factory, gymnasium and torch (tests/setup.sh
makes one, .venv-sf), with Sample Factory's own launch command and `jq` for `sample_factory.launcher.run`:

    .venv-sf/bin/python -m jobqueue launch --run=experiments.sf_cartpole --backend=processes --max_parallel=2 \
        --experiments_per_gpu=-1 --num_gpus=1 --train_dir=./train_dir

Each training saves a checkpoint every five seconds, so a launch killed mid-run carries on from where its jobs
were with `jq resume sf_cartpole`. Rewards are averaged over 20 episodes: SF writes none to TensorBoard until it
has its default 100, which a run this short may never reach; and SF sums up its statistics every 2 s instead of
every 10 s and writes them to TensorBoard every 2 s instead of every 30 s, so an attempt killed early still leaves
its curve for `jq results` and `jq metrics`.
"""

from sample_factory.launcher.run_description import Experiment, ParamGrid, RunDescription

_params = ParamGrid(
    [
        ("seed", [1, 2]),
        ("learning_rate", [0.0001, 0.0003]),
    ]
)

_experiments = [
    Experiment(
        "cartpole",
        "python -m sf_examples.train_gym_env --env=CartPole-v1 --num_workers=2 --num_envs_per_worker=2 --device=cpu "
        "--train_for_env_steps=4096 --save_every_sec=5 --stats_avg=20 --experiment_summaries_interval=2 "
        "--flush_summaries_interval=2",
        _params.generate_params(randomize=False),
    ),
]

RUN_DESCRIPTION = RunDescription("sf_cartpole", experiments=_experiments)
