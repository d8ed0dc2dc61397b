"""Expansion rules: the same names, commands and order as Sample Factory's launcher, minus its defects."""

import shlex

import pytest

from jobqueue import Experiment, ParamGrid, ParamList, RunDescription
from jobqueue.errors import UserError
from jobqueue.sweep import expand, param_shorthand, seeds, set_sweep_seed


def run_of(*experiments, **kwargs):
    return RunDescription("run", experiments=list(experiments), **kwargs)


def test_grid_is_a_cartesian_product_with_the_last_parameter_fastest():
    grid = ParamGrid([("a", [1, 2]), ("b", ["x", "y", "z"])]).generate_params(randomize=False)
    assert grid == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 1, "b": "z"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 2, "b": "z"},
    ]


def test_tied_parameters_expand_to_pairs():
    grid = ParamGrid([("seed", [1, 2]), (("use_rnn", "recurrence"), ([False, 1], [True, 16]))]).generate_params()
    assert grid == [
        {"seed": 1, "use_rnn": False, "recurrence": 1},
        {"seed": 1, "use_rnn": True, "recurrence": 16},
        {"seed": 2, "use_rnn": False, "recurrence": 1},
        {"seed": 2, "use_rnn": True, "recurrence": 16},
    ]


def test_tied_parameters_with_randomize_do_not_crash_and_keep_every_combination():
    grid = ParamGrid([("seed", [1, 2, 3]), (("a", "b"), ([1, 2], [3, 4]))])
    shuffled = grid.generate_params(randomize=True)
    assert sorted(map(str, shuffled)) == sorted(map(str, grid.generate_params(randomize=False)))


def test_param_list_yields_its_dicts_in_order_unless_randomized():
    combos = [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}, {"lr": 1.0}]
    assert ParamList(combos).generate_params(randomize=False) == combos
    assert sorted(ParamList(combos).generate_params(), key=str) == sorted(combos, key=str)  # default randomize=True


def test_randomized_order_is_the_same_each_time_the_sweep_is_loaded_and_differs_from_the_grid():
    grid = ParamGrid([("seed", list(range(20)))])
    set_sweep_seed("my_sweep")
    first = grid.generate_params(randomize=True)
    set_sweep_seed("my_sweep")
    second = grid.generate_params(randomize=True)
    assert first == second
    assert first != grid.generate_params(randomize=False)


def test_seeds_are_in_sample_factory_range_reproducible_and_a_grown_call_keeps_the_first_ones():
    set_sweep_seed("seeded")
    five = seeds(5)
    set_sweep_seed("seeded")
    ten = seeds(10)
    assert ten[:5] == five and len(set(ten)) == 10
    assert all(1000000 <= s < 9999999 for s in ten)
    set_sweep_seed("another_file")
    assert seeds(5) != five


def test_command_and_names_follow_sample_factory_exactly():
    experiment = Experiment(
        "mujoco_all_envs",
        "python -m train --algo=APPO",
        ParamGrid([("seed", [0, 1111]), ("env", ["mujoco_ant"])]).generate_params(),
    )
    jobs = expand(run_of(experiment), train_dir="./train_dir", suffix="")
    assert [j.name for j in jobs] == [
        "00_mujoco_all_envs_see_0_env_mujoco_ant",
        "01_mujoco_all_envs_see_1111_env_mujoco_ant",
    ]
    assert jobs[1].cmd == (
        "python -m train --algo=APPO --seed=1111 --env=mujoco_ant "
        "--experiment=01_mujoco_all_envs_see_1111_env_mujoco_ant "
        "--train_dir=./train_dir/run/mujoco_all_envs_"
    )
    assert jobs[1].argv == shlex.split(jobs[1].cmd)
    assert jobs[1].root_dir == "run/mujoco_all_envs_"


def test_suffix_prefix_and_argument_names_are_honoured():
    experiment = Experiment("e", "app", ParamList([{"model.lr": 3}]).generate_params(randomize=False))
    run = run_of(experiment, experiment_arg_name="name", experiment_dir_arg_name="hydra.dir", param_prefix="")
    (job,) = expand(run, train_dir="/td", suffix="slurm")
    assert job.cmd == "app model.lr=3 name=00_e_m.lr_3 hydra.dir=/td/run/e_slurm"


@pytest.mark.parametrize(
    "params, expected",
    [
        (["train_for_env_steps"], ["t.f.e.ste"]),
        (["lr", "lr_schedule"], ["lr", "l.sch"]),
        (["rollout", "rollout_len", "roll"], ["rol", "r.len", "roll"]),
        (["batch_size", "batch-sizes"], ["b.siz", "b.size"]),  # the second lengthens while it collides
        (["env", "env"], ["env", "env"]),  # cannot lengthen past the whole token: Sample Factory keeps it
    ],
)
def test_shorthands_lengthen_one_letter_at_a_time_while_they_collide(params, expected):
    taken = []
    for p in params:
        taken.append(param_shorthand(p, taken))
    assert taken == expected


def test_without_customized_names_only_the_index_and_base_name():
    experiment = Experiment("base", "app", ParamGrid([("a", [1, 2])]).generate_params())
    jobs = expand(run_of(experiment, customize_experiment_name=False))
    assert [j.name for j in jobs] == ["00_base", "01_base"]


def test_an_experiment_without_parameters_is_one_job():
    (job,) = expand(run_of(Experiment("solo", "app --x=1")))
    assert job.name == "00_solo"
    assert job.cmd == "app --x=1 --experiment=00_solo --train_dir=./train_dir/run/solo_"


def test_the_same_generate_params_result_can_feed_two_experiments():
    params = ParamGrid([("a", [1, 2])]).generate_params()
    run = run_of(Experiment("one", "app", params), Experiment("two", "app", params))
    assert [j.name for j in expand(run)] == ["00_one_a_1", "01_one_a_2", "00_two_a_1", "01_two_a_2"]


def test_a_generator_given_to_two_experiments_is_a_clear_error_not_an_empty_second_experiment():
    params = (p for p in [{"a": 1}])
    Experiment("one", "app", params)
    with pytest.raises(UserError, match="generator that an earlier Experiment already used up"):
        Experiment("two", "app", params)


def test_two_jobs_with_the_same_name_are_a_clear_error():
    run = run_of(Experiment("same", "app", [{"a": 1}]), Experiment("same", "app", [{"a": 1}]))
    with pytest.raises(UserError, match="two jobs are named '00_same_a_1'"):
        expand(run)


def test_values_with_spaces_and_quotes_stay_one_argument_and_the_display_string_quotes_them():
    value = """it's a "quoted" $HOME; value"""
    (job,) = expand(run_of(Experiment("q", "app", [{"msg": value}])))
    assert f"--msg={value}" in job.argv
    assert shlex.split(job.cmd) == job.argv
    assert "'" in job.cmd


def test_values_that_cannot_be_stored_are_a_clear_error():
    with pytest.raises(UserError, match="parameter 'obj' has a value of type object"):
        expand(run_of(Experiment("x", "app", [{"obj": object()}])))


def test_extra_run_description_arguments_become_launch_defaults():
    run = RunDescription("r", experiments=[], use_gpus=2, experiments_per_gpu=-1, max_parallel=1)
    assert run.launch_defaults == {"use_gpus": 2, "experiments_per_gpu": -1, "max_parallel": 1}


def test_experiment_and_run_timeouts():
    run = run_of(Experiment("a", "app"), Experiment("b", "app", timeout=5), timeout=60)
    assert [j.timeout for j in expand(run)] == [60, 5]


def test_env_vars_are_strings():
    (job,) = expand(run_of(Experiment("a", "app", env_vars={"OMP_NUM_THREADS": 1})))
    assert job.env == {"OMP_NUM_THREADS": "1"}
