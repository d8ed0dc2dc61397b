"""Sample Factory 2.1.1's own launcher objects and jq's, given the same sweep definitions, give the same results.

Code written against SF's objects (custom launchers, SF's own launcher tests) calls their methods, and researchers
write grids with numpy. Each definition below runs twice in the venv tests/setup.sh makes for SF (.venv-sf): once
with `M` = sample_factory.launcher.run_description, once with `M` = jobqueue.sweep; what the methods return is
printed as JSON and compared exactly.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from tests.conftest import REPO, Project, service_unavailable

SF_PYTHON = REPO / ".venv-sf" / "bin" / "python"

# Each case defines GRID (a ParamGrid or ParamList), RANDOMIZE, RUN, and may set SUFFIX and MAKEDIRS.
CASES = {
    "plain": """
        GRID = M.ParamGrid([("seed", [0, 1111, 2222]), ("env", ["mujoco_ant", "mujoco_hopper"])])
        RANDOMIZE = False
        RUN = M.RunDescription("mujoco", [
            M.Experiment("all_envs", "python -m train --algo=APPO", GRID.generate_params(randomize=RANDOMIZE),
                         env_vars={"OMP_NUM_THREADS": 1}),
            M.Experiment("solo", "python -m train --algo=APPO --seed=7"),
        ])
    """,
    "tied": """
        GRID = M.ParamGrid([
            ("seed", [1111, 2222]),
            (("serial_mode", "async_rl"), ([True, False], [False, True])),
            (("use_rnn", "recurrence"), ([False, 1], [True, 16])),
        ])
        RANDOMIZE = False
        RUN = M.RunDescription("tied", [M.Experiment("rnn", "python -m train", GRID.generate_params(randomize=RANDOMIZE))])
        SUFFIX = "slurm"
    """,
    "numpy": """
        GRID = M.ParamGrid([
            ("seed", list(np.arange(2))),
            ("lr", [np.float32(0.2), np.float64(0.1), np.float16(0.1)]),
            ("with_rnn", [np.bool_(True), np.bool_(False)]),
            ("layers", np.array([2, 3], dtype=np.uint8)),
        ])
        RANDOMIZE = False
        RUN = M.RunDescription("np", [M.Experiment("np", "python -m train", GRID.generate_params(randomize=RANDOMIZE))])
    """,
    # SF's own launcher test's grid: a `{}` value, None, and numpy integers.
    "sf_launcher_test": """
        GRID = M.ParamGrid([("p1", [3.14, 2.71]), ("p2", ["a", "b"]), ("p3", [None, {}]), ("p4", list(np.arange(2)))])
        RANDOMIZE = False
        RUN = M.RunDescription("__test_run__", [
            M.Experiment("test_echo", "echo", GRID.generate_params(randomize=RANDOMIZE)),
        ], experiment_arg_name="--experiment_tst", experiment_dir_arg_name="--dir")
    """,
    "hydra_without_custom_names": """
        GRID = M.ParamList([{"model.lr": np.float64(3e-4), "train.batch_size": 64}, {"model.lr": 1e-3}])
        RANDOMIZE = False
        RUN = M.RunDescription("hydra", [M.Experiment("h", "python app.py", GRID.generate_params(randomize=RANDOMIZE))],
                               experiment_arg_name="name", experiment_dir_arg_name="hydra.run.dir",
                               customize_experiment_name=False, param_prefix="")
        MAKEDIRS = False
    """,
    # Shuffled: the order differs between the two (SF draws from numpy's global generator), the combinations do not.
    "randomized_grid": """
        GRID = M.ParamGrid([("seed", list(np.arange(4))), ("env", ["ant", "hopper"])])
        RANDOMIZE = True
        RUN = M.RunDescription("shuffled", [M.Experiment("s", "python -m train", GRID.generate_params(randomize=RANDOMIZE))])
    """,
    "randomized_list": """
        GRID = M.ParamList([{"lr": 0.1, "seed": 1}, {"lr": 0.01}, {"lr": 0.001, "seed": 3}])
        RANDOMIZE = True
        RUN = M.RunDescription("shuffled", [M.Experiment("s", "python -m train", GRID.generate_params(randomize=RANDOMIZE))])
    """,
}

# Runs every case with one implementation and prints, per case, what the methods returned. A value is written
# as its type, repr and f-string text, so that np.int64(1) and 1 differ.
PROBE = r"""
import json, os, sys, textwrap
import numpy as np

impl, cases, work = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if impl == "sf":
    import sample_factory.launcher.run_description as M
else:
    import jobqueue.sweep as M
    from jobqueue.sweep import expand


def typed(params):
    return {k: [f"{type(v).__module__}.{type(v).__qualname__}", repr(v), f"{v}"] for k, v in params.items()}


results = {}
for case, source in cases.items():
    scope = {"M": M, "np": np, "SUFFIX": "", "MAKEDIRS": True}
    exec(textwrap.dedent(source), scope)
    run = scope["RUN"]
    run.experiment_suffix = scope["SUFFIX"]
    os.makedirs(os.path.join(work, case))
    os.chdir(os.path.join(work, case))
    result = {
        "params": [typed(p) for p in scope["GRID"].generate_params(randomize=scope["RANDOMIZE"])],
        "experiments": [list(map(list, e.generate_experiments(run.experiment_arg_name, run.customize_experiment_name,
                                                              run.param_prefix))) for e in run.experiments],
        "run": [[cmd, name, root_dir, repr(env_vars)]
                for cmd, name, root_dir, env_vars in run.generate_experiments("td", makedirs=scope["MAKEDIRS"])],
        "dirs": sorted(root for root, _, _ in os.walk(".")),
    }
    if impl == "jq":
        result["jobs"] = [{"name": j.name, "cmd": j.cmd, "argv": j.argv, "params": j.params}
                          for j in expand(run, train_dir="td", suffix=scope["SUFFIX"])]
    results[case] = result
print(json.dumps(results))
"""


def probe(impl: str, work) -> dict:
    work.mkdir()
    proc = subprocess.run(
        [str(SF_PYTHON), "-c", PROBE, impl, json.dumps(CASES), str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, f"the {impl} probe failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[dict, dict]:
    if not SF_PYTHON.exists():
        service_unavailable("Sample Factory", f"{SF_PYTHON} is missing; tests/setup.sh makes it")
    work = tmp_path_factory.mktemp("sf_compat")
    return probe("sf", work / "sf"), probe("jq", work / "jq")


ORDERED = [case for case in CASES if "randomize" not in case]


@pytest.mark.parametrize("case", ORDERED)
def test_generate_params_gives_sf_values_of_sf_types_in_sf_order(both, case):
    sf, jq = both
    assert jq[case]["params"] == sf[case]["params"]


@pytest.mark.parametrize("case", ORDERED)
def test_experiment_generate_experiments_yields_sf_command_strings_and_names(both, case):
    sf, jq = both
    assert jq[case]["experiments"] == sf[case]["experiments"]


@pytest.mark.parametrize("case", ORDERED)
def test_run_description_generate_experiments_yields_sf_tuples_and_makes_sf_directories(both, case):
    sf, jq = both
    assert jq[case]["run"] == sf[case]["run"]
    assert jq[case]["dirs"] == sf[case]["dirs"]


def test_makedirs_makes_each_experiment_directory_and_makedirs_false_none(both):
    for result in both:
        assert result["plain"]["dirs"] == [".", "./td", "./td/mujoco", "./td/mujoco/all_envs_", "./td/mujoco/solo_"]
        assert result["hydra_without_custom_names"]["dirs"] == ["."]


@pytest.mark.parametrize("case", ["randomized_grid", "randomized_list"])
def test_shuffled_params_are_sf_combinations_with_sf_text(both, case):
    """SF's shuffle turns a grid into one numpy array, so its np.int64 and str values come back as np.str_: the
    types differ from jq's, the text (what reaches the command line and the name) does not."""
    sf, jq = both

    def texts(result):
        return sorted(json.dumps({k: text for k, (_, _, text) in p.items()}) for p in result["params"])

    assert texts(jq[case]) == texts(sf[case])
    assert len(jq[case]["run"]) == len(sf[case]["run"]) == len(sf[case]["params"])


@pytest.mark.parametrize("case", ORDERED)
def test_jq_jobs_have_sf_names_and_sf_commands_quoted_where_the_shell_needs_it(both, case):
    sf, jq = both
    jobs = jq[case]["jobs"]
    assert [job["name"] for job in jobs] == [name for _, name, _, _ in sf[case]["run"]]
    # SF's processes backend runs cmd.split(" "); none of these values holds a space, so that is the argv.
    assert [job["argv"] for job in jobs] == [cmd.split(" ") for cmd, _, _, _ in sf[case]["run"]]
    assert [job["cmd"] for job in jobs] == [
        " ".join(map(shlex.quote, cmd.split(" "))) for cmd, _, _, _ in sf[case]["run"]
    ]


def test_numpy_values_are_stored_as_the_python_values_item_gives(both):
    _, jq = both
    stored = [json.dumps(job["params"]) for job in jq["numpy"]["jobs"]]
    assert stored[:3] == [
        '{"seed": 0, "lr": 0.20000000298023224, "with_rnn": true, "layers": 2}',
        '{"seed": 0, "lr": 0.20000000298023224, "with_rnn": true, "layers": 3}',
        '{"seed": 0, "lr": 0.20000000298023224, "with_rnn": false, "layers": 2}',
    ]
    assert json.dumps(jq["sf_launcher_test"]["jobs"][3]["params"]) == '{"p1": 3.14, "p2": "a", "p3": {}, "p4": 1}'


NUMPY_SWEEP = """
    import numpy as np
    from sample_factory.launcher.run_description import Experiment, ParamGrid, RunDescription

    _params = ParamGrid([("seed", list(np.arange(2))), ("lr", [np.float32(0.2)]), ("rnn", [np.bool_(True)]), ("cfg", [{}])])
    RUN_DESCRIPTION = RunDescription("np_sweep", experiments=[
        Experiment("e", "python -m train", _params.generate_params(randomize=False)),
    ])
"""


def test_enqueue_of_a_numpy_grid_stores_plain_values_and_a_second_enqueue_adds_nothing(tmp_path):
    if not SF_PYTHON.exists():
        service_unavailable("Sample Factory", f"{SF_PYTHON} is missing; tests/setup.sh makes it")
    project = Project(tmp_path, str(tmp_path / "jobqueue.db"))
    project.write("np_sweep.py", NUMPY_SWEEP)

    def sf_enqueue() -> str:
        proc = subprocess.run(
            [str(SF_PYTHON), "-m", "jobqueue", "enqueue", "np_sweep.py"],
            cwd=tmp_path,
            env=project.env(PYTHONPATH=REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "Enqueued 2 new jobs" in sf_enqueue()
    assert "Nothing to add: all 2 jobs" in sf_enqueue()
    jobs = project.jobs()
    assert [job["name"] for job in jobs] == [
        "00_e_see_0_lr_0.20000000298023224_rnn_True_cfg_{}",
        "01_e_see_1_lr_0.20000000298023224_rnn_True_cfg_{}",
    ]
    assert [json.dumps(job["params"]) for job in jobs] == [
        '{"seed": 0, "lr": 0.20000000298023224, "rnn": true, "cfg": {}}',
        '{"seed": 1, "lr": 0.20000000298023224, "rnn": true, "cfg": {}}',
    ]
    assert jobs[1]["argv"][3:6] == ["--seed=1", "--lr=0.20000000298023224", "--rnn=True"]
