"""The sweep API users already know from Sample Factory's launcher, and its expansion into jobs.

Pure functions and small objects: no database, and no I/O but the directories Sample Factory's own
RunDescription.generate_experiments makes. The objects' methods return what Sample Factory's return, for
code written against them; jq expands with experiment_jobs() and expand(), which give the same names,
commands and order but keep argv as a list, so values with spaces or quotes stay one argument.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import product
from os.path import join
from typing import Any, Iterable, Iterator

from jobqueue.errors import UserError

# Randomized orders and seeds() must be the same each time the same sweep is loaded, because job
# names carry the index and a re-enqueue must find the same names. The loader sets the sweep's
# identity here before running the file; each call then draws from its own seeded generator.
_seed_state = {"sweep": "", "calls": 0}


def set_sweep_seed(sweep_id: str) -> None:
    _seed_state["sweep"] = sweep_id
    _seed_state["calls"] = 0


def _next_rng(kind: str) -> random.Random:
    _seed_state["calls"] += 1
    return random.Random(f"{_seed_state['sweep']}:{kind}:{_seed_state['calls']}")


def seeds(num_seeds: int) -> list[int]:
    """Sample Factory's `launcher_utils.seeds`: n integers in [1000000, 9999999), reproducible per sweep file.

    Asking for more seeds later (a growing sweep) keeps the first ones: the same call in the file
    draws from the same generator.
    """
    rng = _next_rng("seeds")
    return [rng.randrange(1000000, 9999999) for _ in range(num_seeds)]


class ParamGenerator:
    def generate_params(self, randomize: bool = True) -> list[dict]:
        raise NotImplementedError


class ParamList(ParamGenerator):
    """The list of parameter combinations, as given."""

    def __init__(self, combinations: Iterable[dict]):
        self.combinations = list(combinations)

    def generate_params(self, randomize: bool = True) -> list[dict]:
        # A list rather than a generator: it can be given to several Experiments.
        combinations = list(self.combinations)
        if randomize:
            _next_rng("permutation").shuffle(combinations)
        return combinations


class ParamGrid(ParamGenerator):
    """Grid search: the cartesian product in the order listed, the last parameter varying fastest.

    A key may be a tuple of names whose values are tuples, to tie parameters together:
    `(("use_rnn", "recurrence"), ([False, 1], [True, 16]))`.
    """

    def __init__(self, grid_tuples):
        self.grid = OrderedDict(grid_tuples)

    def generate_params(self, randomize: bool = False) -> list[dict]:
        if not self.grid:
            return []
        names = tuple(self.grid.keys())
        combinations = list(product(*self.grid.values()))
        if randomize:
            # Sample Factory's numpy permutation crashes on tied parameters; shuffling tuples does not.
            _next_rng("permutation").shuffle(combinations)
        params = []
        for combination in combinations:
            combination_dict = {}
            for name, value in zip(names, combination):
                if isinstance(name, (list, tuple)):
                    for tied_name, tied_value in zip(name, value):
                        combination_dict[tied_name] = tied_value
                else:
                    combination_dict[name] = value
            params.append(combination_dict)
        return params


# One-shot iterators already turned into an Experiment's parameters: a second Experiment given the
# same one would silently get nothing.
_consumed_iterators: "weakref.WeakSet[Any]" = weakref.WeakSet()


class Experiment:
    def __init__(self, name, cmd, param_generator=(), env_vars=None, timeout: float | None = None):
        """
        :param name: base name of the experiment's jobs
        :param cmd: base command to append the parameters to
        :param param_generator: iterable of parameter dicts (e.g. ParamGrid(...).generate_params())
        :param env_vars: extra environment variables for every job of this experiment
        :param timeout: seconds after which a job is stopped and recorded as `timeout`
        """
        self.base_name = name
        self.cmd = cmd
        if iter(param_generator) is param_generator:
            if param_generator in _consumed_iterators:
                raise UserError(
                    f"Experiment {name!r} was given a generator that an earlier Experiment already used up; "
                    "call generate_params() once per Experiment (or pass a list)"
                )
            try:
                _consumed_iterators.add(param_generator)
            except TypeError:
                pass
        self.params = list(param_generator)
        self.env_vars = env_vars
        self.timeout = timeout

    def generate_experiments(self, experiment_arg_name, customize_experiment_name, param_prefix):
        """Sample Factory's: yields (command, experiment_name), the command one string joined by spaces."""
        generated = experiment_jobs(self, experiment_arg_name, customize_experiment_name, param_prefix)
        for tokens, experiment_name, _ in generated:
            yield " ".join([self.cmd] + tokens), experiment_name


def experiment_jobs(
    experiment: Experiment, experiment_arg_name: str, customize_experiment_name: bool, param_prefix: str
) -> Iterator[tuple[list[str], str, dict]]:
    """jq's expansion of one Experiment: (argv tokens after its command, experiment_name, params).

    Names and tokens are Sample Factory's text: each value formatted as its f-string does.
    """
    params_list = experiment.params
    for experiment_idx in range(max(1, len(params_list))):
        tokens = []
        name_tokens = [experiment.base_name]
        shorthands: list[str] = []
        params = params_list[experiment_idx] if params_list else {}
        for param, value in params.items():
            tokens.append(f"{param_prefix}{param}={value}")
            shorthand = param_shorthand(param, shorthands)
            shorthands.append(shorthand)
            name_tokens.append(f"{shorthand}_{value}")
        if customize_experiment_name:
            experiment_name = f"{experiment_idx:02d}_" + "_".join(name_tokens)
        else:
            experiment_name = f"{experiment_idx:02d}_{experiment.base_name}"
        tokens.append(f"{experiment_arg_name}={experiment_name}")
        yield tokens, experiment_name, params


def param_shorthand(param: str, taken: list[str]) -> str:
    """`train_for_env_steps` -> `t.f.e.ste`: first letters, then 3 letters of the last token, longer while taken."""
    tokens = re.split("[._-]", param)
    head = [t[:1] for t in tokens[:-1]]
    last = tokens[-1]
    length = min(3, len(last))
    shorthand = ".".join(head + [last[:length]])
    while length <= len(last) and shorthand in taken:
        length += 1
        shorthand = ".".join(head + [last[:length]])
    return shorthand


class RunDescription:
    def __init__(
        self,
        run_name,
        experiments,
        experiment_arg_name="--experiment",
        experiment_dir_arg_name="--train_dir",
        customize_experiment_name=True,
        param_prefix="--",
        timeout: float | None = None,
        **launch_defaults,
    ):
        """
        :param run_name: overall name of the experiment and the name of the root folder
        :param experiments: a list of Experiment objects to run
        :param experiment_arg_name: CLI argument that gets each job's unique name. Default: --experiment
        :param experiment_dir_arg_name: CLI argument for the root train dir. Default: --train_dir
        :param customize_experiment_name: whether to add the hyperparameter combination to the name
        :param param_prefix: prefix of each parameter ("" for Hydra)
        :param timeout: default per-job timeout in seconds
        :param launch_defaults: anything else (e.g. max_parallel=1, experiments_per_gpu=-1) is kept as
               the run's default launch settings
        """
        self.run_name = run_name
        self.experiments = experiments
        self.experiment_suffix = ""
        self.experiment_arg_name = experiment_arg_name
        self.experiment_dir_arg_name = experiment_dir_arg_name
        self.customize_experiment_name = customize_experiment_name
        self.param_prefix = param_prefix
        self.timeout = timeout
        self.launch_defaults = launch_defaults

    def generate_experiments(self, train_dir, makedirs=True):
        """Sample Factory's: yields (command, experiment_name, root_dir, env_vars) and, unless makedirs is
        False, creates each experiment's directory under train_dir, as its launchers expect."""
        for experiment in self.experiments:
            root_dir = experiment_root_dir(self, experiment, self.experiment_suffix)
            experiment_dir = join(train_dir, root_dir)
            generated = experiment.generate_experiments(
                self.experiment_arg_name, self.customize_experiment_name, self.param_prefix
            )
            for cmd, experiment_name in generated:
                if makedirs:
                    os.makedirs(experiment_dir, exist_ok=True)
                yield f"{cmd} {self.experiment_dir_arg_name}={experiment_dir}", experiment_name, root_dir, experiment.env_vars


def experiment_root_dir(run: RunDescription, experiment: Experiment, suffix: str) -> str:
    """Where an experiment's jobs write, relative to the train dir: RUN/BASE_NAME_SUFFIX."""
    return join(run.run_name, f"{experiment.base_name}_{suffix}")


@dataclass(frozen=True)
class JobSpec:
    """One experiment of a sweep, as it will be stored and run."""

    name: str
    experiment: str
    params: dict
    argv: list[str]
    cmd: str
    root_dir: str
    experiment_dir: str
    env: dict | None = None
    timeout: float | None = None
    index: int = field(default=0)

    def as_json(self) -> dict:
        return {"name": self.name, "cmd": self.cmd, "argv": self.argv, "root_dir": self.root_dir, "env": self.env}


def display_command(base_cmd: str, tokens: list[str]) -> str:
    """Sample Factory's command string, with shell quoting only where a token needs it."""
    return " ".join([base_cmd] + [shlex.quote(t) for t in tokens])


def expand(run: RunDescription, train_dir: str = "./train_dir", suffix: str | None = None) -> list[JobSpec]:
    """All jobs of a run, in Sample Factory's order. Raises UserError on duplicate names or bad values."""
    suffix = run.experiment_suffix if suffix is None else suffix
    jobs: list[JobSpec] = []
    seen: dict[str, str] = {}
    for experiment in run.experiments:
        if not isinstance(experiment, Experiment):
            raise UserError(f"RUN_DESCRIPTION.experiments holds a {type(experiment).__name__}; use Experiment(...)")
        root_dir = experiment_root_dir(run, experiment, suffix)
        experiment_dir = join(train_dir, root_dir)
        try:
            base_argv = shlex.split(experiment.cmd)
        except ValueError as exc:
            raise UserError(f"experiment {experiment.base_name!r}: cannot split its command ({exc}); check its quotes")
        generated = experiment_jobs(experiment, run.experiment_arg_name, run.customize_experiment_name, run.param_prefix)
        for tokens, name, params in generated:
            if name in seen:
                raise UserError(
                    f"two jobs are named {name!r} (experiments {seen[name]!r} and {experiment.base_name!r}); "
                    "give the Experiments different names or remove the repeated parameter values"
                )
            seen[name] = experiment.base_name
            tokens = tokens + [f"{run.experiment_dir_arg_name}={experiment_dir}"]
            env = {str(k): str(v) for k, v in experiment.env_vars.items()} if experiment.env_vars else None
            jobs.append(
                JobSpec(
                    name=name,
                    experiment=experiment.base_name,
                    params=_stored_params(experiment.base_name, params),
                    argv=base_argv + tokens,
                    cmd=display_command(experiment.cmd, tokens),
                    root_dir=root_dir,
                    experiment_dir=experiment_dir,
                    env=env,
                    timeout=experiment.timeout if experiment.timeout is not None else run.timeout,
                    index=len(jobs),
                )
            )
    return jobs


_PLAIN = (str, int, bool, type(None))


def _stored_params(experiment: str, params: dict) -> dict:
    """The parameters as the database stores them: JSON values, numpy scalars as their Python equal.

    The command line and the name keep the original value's text (Sample Factory's); only the stored
    copy is converted, so `jq list` and grouping see plain ints, floats and bools.
    """
    stored = params
    for key, value in params.items():
        if type(value) in _PLAIN or (type(value) is float and value == value and abs(value) != float("inf")):
            continue  # the common case, without serializing every value of a large grid
        try:
            plain = json.loads(json.dumps(value, allow_nan=False, default=_numpy_scalar_as_plain))
        except (TypeError, ValueError):
            raise UserError(
                f"experiment {experiment!r}: parameter {key!r} has a value of type {type(value).__name__} "
                f"({value!r:.60}) that cannot be stored; use str, int, float, bool, None, numpy scalars "
                "or lists and dicts of them"
            ) from None
        if stored is params:
            stored = dict(params)
        stored[key] = plain
    return stored


def _numpy_scalar_as_plain(value: Any) -> Any:
    """json.dumps' hook: a numpy scalar (np.int64, np.float32, np.bool_, ...) as the Python value .item() gives.

    Recognised by its type's module, so a sweep that does not use numpy never imports it. A scalar with
    no JSON equal (complex, datetime64, longdouble) is stored as the text its command line shows.
    """
    if type(value).__module__ != "numpy" or getattr(value, "shape", None) != () or not hasattr(value, "item"):
        raise TypeError(type(value).__name__)
    plain = value.item()
    return plain if type(plain) in _PLAIN or type(plain) is float else f"{value}"
