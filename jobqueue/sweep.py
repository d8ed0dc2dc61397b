"""The sweep API users already know from Sample Factory's launcher, and its expansion into jobs.

Pure functions and small objects: no database, and no I/O but the directories Sample Factory's own
RunDescription.generate_experiments makes. The objects' methods return what Sample Factory's return, for
code written against them; jq expands with experiment_jobs() and expand(), which give the same names,
commands and order but keep argv as a list, so values with spaces or quotes stay one argument.

Nothing here holds a sweep's jobs all at once: a grid's combinations and a run's jobs are sequences made as
they are read, so a million-job grid takes the memory of its values, not of a million dicts.
"""

from __future__ import annotations

import json
import operator
import os
import random
import re
import shlex
import weakref
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from os.path import join
from typing import Any

from jobqueue.errors import UserError

# Randomized orders and seeds() must be the same each time the same sweep is loaded, because job
# names carry the index and a re-enqueue must find the same names. The loader sets the sweep's
# identity here before running the file; each call then draws from its own seeded generator.
_seed_state: dict[str, Any] = {"sweep": "", "calls": 0}


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
    def generate_params(self, randomize: bool = True) -> Sequence[dict]:
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

    def generate_params(self, randomize: bool = False) -> GridCombinations | list:
        if not self.grid:
            return []
        # Each value list is read once, now, as itertools.product would: a generator among them is used up here.
        values = tuple(tuple(v) for v in self.grid.values())
        combinations = GridCombinations(tuple(self.grid.keys()), values)
        if randomize:
            # Sample Factory's numpy permutation crashes on tied parameters. Shuffling the combinations' indices
            # draws what shuffling a list of them would, so the order (and so every name) stays what it was.
            order = array("q", range(len(combinations)))
            _next_rng("permutation").shuffle(order)
            combinations = GridCombinations(combinations.names, values, order)
        return combinations


class _MadeWhenRead(Sequence):
    """A sequence of `_length` items, each made by `_item(i)` when read: indexing (negative, slices) as a list's."""

    _length: int

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        i = operator.index(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._item(i)

    def _item(self, i: int):
        raise NotImplementedError


class GridCombinations(_MadeWhenRead):
    """ParamGrid.generate_params()'s result: the list of parameter dicts it stands for, each dict made when read.

    It is a sequence like that list -- len(), indexing, iterating again, == with a list -- but it holds only the
    grid's values (and a shuffled grid, the order of its indices), so an Experiment of a million combinations
    costs no more memory than one of ten.
    """

    def __init__(self, names: tuple, values: tuple[tuple, ...], order: array | None = None):
        self.names, self.values, self.order = names, values, order
        self._tied = any(isinstance(name, (list, tuple)) for name in names)
        self._length = 1
        for options in values:
            self._length *= len(options)

    def __iter__(self) -> Iterator[dict]:
        combinations = product(*self.values) if self.order is None else map(self._combination, self.order)
        as_dict = self._as_dict
        for combination in combinations:
            yield as_dict(combination)

    def _item(self, i: int) -> dict:
        return self._as_dict(self._combination(i if self.order is None else self.order[i]))

    def _combination(self, i: int) -> tuple:
        """The i-th tuple of the product, the last value list varying fastest."""
        picked = []
        for options in reversed(self.values):
            i, which = divmod(i, len(options))
            picked.append(options[which])
        return tuple(reversed(picked))

    def _as_dict(self, combination: tuple) -> dict:
        if not self._tied:
            return dict(zip(self.names, combination))
        combination_dict = {}
        for name, value in zip(self.names, combination):
            if isinstance(name, (list, tuple)):
                for tied_name, tied_value in zip(name, value):
                    combination_dict[tied_name] = tied_value
            else:
                combination_dict[name] = value
        return combination_dict

    def distinct_params(self) -> Iterator[tuple[Any, Any]]:
        """Each (name, value) the combinations hold, once: what a check of every value needs to see."""
        for name, options in zip(self.names, self.values):
            for value in options:
                if isinstance(name, (list, tuple)):
                    yield from zip(name, value)
                else:
                    yield name, value

    def __eq__(self, other):
        if isinstance(other, (list, GridCombinations)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __add__(self, other):
        return list(self) + list(other) if isinstance(other, (list, GridCombinations)) else NotImplemented

    def __radd__(self, other):
        return list(other) + list(self) if isinstance(other, list) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


# One-shot iterators already turned into an Experiment's parameters: a second Experiment given the
# same one would silently get nothing.
_consumed_iterators: weakref.WeakSet[Any] = weakref.WeakSet()


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
        self.params: Sequence[dict]
        if isinstance(param_generator, GridCombinations):
            self.params = param_generator  # read as the jobs are made: a list of it would hold every combination
        else:
            self.params = _params_list(name, param_generator)
        self.env_vars = env_vars
        self.timeout = timeout

    def generate_experiments(self, experiment_arg_name, customize_experiment_name, param_prefix):
        """Sample Factory's: yields (command, experiment_name), the command one string joined by spaces."""
        generated = experiment_jobs(self, experiment_arg_name, customize_experiment_name, param_prefix)
        for tokens, experiment_name, _ in generated:
            yield " ".join([self.cmd] + tokens), experiment_name


def _params_list(name: str, param_generator) -> list:
    """An Experiment's parameters given as anything else than a grid: a list of them, as Sample Factory makes."""
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
    return list(param_generator)


def experiment_jobs(
    experiment: Experiment, experiment_arg_name: str, customize_experiment_name: bool, param_prefix: str
) -> Iterator[tuple[list[str], str, dict]]:
    """jq's expansion of one Experiment: (argv tokens after its command, experiment_name, params).

    Names and tokens are Sample Factory's text: each value formatted as its f-string does.
    """
    naming = _Naming(experiment.base_name, experiment_arg_name, customize_experiment_name, param_prefix)
    for experiment_idx, params in enumerate(experiment.params or [{}]):
        tokens, experiment_name = naming(experiment_idx, params)
        yield tokens, experiment_name, params


class _Naming:
    """Sample Factory's argv tokens and name for the job at one index of an Experiment."""

    def __init__(self, base_name: str, experiment_arg_name: str, customize_experiment_name: bool, param_prefix: str):
        self.base_name, self.experiment_arg_name = base_name, experiment_arg_name
        self.customize, self.prefix = customize_experiment_name, param_prefix
        self._shorthands: dict[tuple, list[str]] = {}  # per list of parameter names: a grid has one

    def __call__(self, experiment_idx: int, params: dict) -> tuple[list[str], str]:
        prefix, tokens = self.prefix, []
        experiment_name = f"{experiment_idx:02d}_{self.base_name}"
        if self.customize:
            names = tuple(params)
            for param, shorthand, value in zip(names, self._shorthands_of(names), params.values()):
                text = f"{value}"
                tokens.append(f"{prefix}{param}={text}")
                experiment_name += f"_{shorthand}_{text}"
        else:
            for param, value in params.items():
                tokens.append(f"{prefix}{param}={value}")
        tokens.append(f"{self.experiment_arg_name}={experiment_name}")
        return tokens, experiment_name

    def _shorthands_of(self, names: tuple) -> list[str]:
        shorthands = self._shorthands.get(names)
        if shorthands is None:
            shorthands = []
            for param in names:
                shorthands.append(param_shorthand(param, shorthands))
            if len(self._shorthands) > 1000:  # a ParamList whose dicts all differ: keep the memory bounded
                self._shorthands.clear()
            self._shorthands[names] = shorthands
        return shorthands


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
                yield (
                    f"{cmd} {self.experiment_dir_arg_name}={experiment_dir}",
                    experiment_name,
                    root_dir,
                    experiment.env_vars,
                )


def experiment_root_dir(run: RunDescription, experiment: Experiment, suffix: str) -> str:
    """Where an experiment's jobs write, relative to the train dir: RUN/BASE_NAME_SUFFIX."""
    return join(run.run_name, f"{experiment.base_name}_{suffix}")


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which triples the cost of making
# one, and a big sweep makes a JobSpec per job.
@dataclass(slots=True)
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


_NEEDS_QUOTES = re.compile(r"[^\w@%+=:,./-]", re.ASCII).search  # shlex.quote's test of a token


def display_command(base_cmd: str, tokens: list[str]) -> str:
    """Sample Factory's command string, with shell quoting only where a token needs it."""
    if all(tokens) and _NEEDS_QUOTES("".join(tokens)) is None:  # the common case, in one test instead of one a token
        return " ".join([base_cmd, *tokens])
    return " ".join([base_cmd] + [shlex.quote(t) for t in tokens])


def expand(run: RunDescription, train_dir: str = "./train_dir", suffix: str | None = None) -> SweepJobs:
    """All jobs of a run, in Sample Factory's order, as a sequence that makes each job when it is read.

    Raises UserError at once, before any job is made, on duplicate names or values that cannot be stored.
    """
    return SweepJobs(run, train_dir, run.experiment_suffix if suffix is None else suffix)


class SweepJobs(_MadeWhenRead):
    """A run's jobs (JobSpecs) in Sample Factory's order: len(), iterating (again) and indexing, each job made when
    it is read, so that a sweep of a million jobs streams from the sweep file to the database."""

    def __init__(self, run: RunDescription, train_dir: str, suffix: str):
        self.run_name = run.run_name
        self._experiments: list[_ExperimentJobs] = []
        first = 0
        for experiment in run.experiments:
            if not isinstance(experiment, Experiment):
                raise UserError(f"RUN_DESCRIPTION.experiments holds a {type(experiment).__name__}; use Experiment(...)")
            self._experiments.append(_ExperimentJobs(run, experiment, train_dir, suffix, first))
            first += len(self._experiments[-1])
        self._length = first
        self._firsts = [part.first for part in self._experiments]
        for part in self._experiments:
            part.check_values()
        _check_unique_names(self._experiments, run.customize_experiment_name)

    def __iter__(self) -> Iterator[JobSpec]:
        for part in self._experiments:
            yield from part

    def _item(self, i: int) -> JobSpec:
        part = self._experiments[bisect_right(self._firsts, i) - 1]
        return part.job(i - part.first, part.params[i - part.first] if part.params else {})


class _ExperimentJobs:
    """One Experiment's jobs within a run: what its jobs share, worked out once, and each job from its params."""

    def __init__(self, run: RunDescription, experiment: Experiment, train_dir: str, suffix: str, first: int):
        self.base_name, self.cmd, self.params, self.first = (
            experiment.base_name,
            experiment.cmd,
            experiment.params,
            first,
        )
        try:
            self.base_argv = shlex.split(experiment.cmd)
        except ValueError as exc:
            raise UserError(
                f"experiment {experiment.base_name!r}: cannot split its command ({exc}); check its quotes"
            ) from None
        self.root_dir = experiment_root_dir(run, experiment, suffix)
        self.experiment_dir = join(train_dir, self.root_dir)
        self.dir_token = f"{run.experiment_dir_arg_name}={self.experiment_dir}"
        self.env = {str(k): str(v) for k, v in experiment.env_vars.items()} if experiment.env_vars else None
        self.timeout = experiment.timeout if experiment.timeout is not None else run.timeout
        self.naming = _Naming(
            experiment.base_name, run.experiment_arg_name, run.customize_experiment_name, run.param_prefix
        )
        self.stored_as_given = False  # until check_values() has seen every value

    def __len__(self) -> int:
        return max(1, len(self.params))

    def __iter__(self) -> Iterator[JobSpec]:
        job = self.job
        for experiment_idx, params in enumerate(self.params or [{}]):
            yield job(experiment_idx, params)

    def job(self, experiment_idx: int, params: dict) -> JobSpec:
        tokens, name = self.naming(experiment_idx, params)
        tokens.append(self.dir_token)
        stored = params if self.stored_as_given else _stored_params(self.base_name, params)
        return JobSpec(
            name,
            self.base_name,
            stored,
            self.base_argv + tokens,
            display_command(self.cmd, tokens),
            self.root_dir,
            self.experiment_dir,
            self.env,
            self.timeout,
            self.first + experiment_idx,
        )

    def names(self) -> Iterator[str]:
        for experiment_idx, params in enumerate(self.params or [{}]):
            yield self.naming(experiment_idx, params)[1]

    def check_values(self) -> None:
        """Every value can be stored (else UserError): a grid's values once each, not once per job. Notes whether
        any needs converting, which most sweeps' never do."""
        if isinstance(self.params, GridCombinations):
            named_values = self.params.distinct_params()
        else:
            named_values = (item for params in self.params for item in params.items())
        self.stored_as_given = True
        for name, value in named_values:
            if not _is_plain(value):
                self.stored_as_given = False
                _stored_params(self.base_name, {name: value})


def _check_unique_names(experiments: list[_ExperimentJobs], customize_experiment_name: bool) -> None:
    """UserError if two jobs of the run share a name, found without holding every name.

    A name starts with its index within its Experiment (`07_`, `123_`: digits, then the first `_`), so two jobs
    of one Experiment never share one, and jobs of two Experiments only at the same index -- and only when one
    base name is the other's or starts with it and `_` (what follows the index is the base name, then `_` and the
    parameters). Such pairs are compared index by index, in the order the jobs come, so the error names the
    first repeated name, as a check of each job against all before it would.
    """
    for position, later in enumerate(experiments):
        rivals = [
            e
            for e in experiments[:position]
            if _names_may_meet(e.base_name, later.base_name, customize_experiment_name)
        ]
        if not rivals:
            continue
        rival_names = [rival.names() for rival in rivals]
        for name in later.names():
            for rival, names in zip(rivals, rival_names):
                if next(names, None) == name:
                    raise UserError(
                        f"two jobs are named {name!r} (experiments {rival.base_name!r} and {later.base_name!r}); "
                        "give the Experiments different names or remove the repeated parameter values"
                    )


def _names_may_meet(a, b, customize_experiment_name: bool) -> bool:
    a, b = f"{a}", f"{b}"
    if a == b:
        return True
    return customize_experiment_name and (b.startswith(a + "_") or a.startswith(b + "_"))


_PLAIN = (str, int, bool, type(None))


def _stored_params(experiment: str, params: dict) -> dict:
    """The parameters as the database stores them: JSON values, numpy scalars as their Python equal.

    The command line and the name keep the original value's text (Sample Factory's); only the stored
    copy is converted, so `jq list` and grouping see plain ints, floats and bools.
    """
    stored = params
    for key, value in params.items():
        if _is_plain(value):
            continue
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


def _is_plain(value: Any) -> bool:
    """A value stored as it is: the common case, which needs no serializing."""
    return type(value) in _PLAIN or (type(value) is float and value == value and abs(value) != float("inf"))


def _numpy_scalar_as_plain(value: Any) -> Any:
    """json.dumps' hook: a numpy scalar (np.int64, np.float32, np.bool_, ...) as the Python value .item() gives.

    Recognised by its type's module, so a sweep that does not use numpy never imports it. A scalar with
    no JSON equal (complex, datetime64, longdouble) is stored as the text its command line shows.
    """
    if type(value).__module__ != "numpy" or getattr(value, "shape", None) != () or not hasattr(value, "item"):
        raise TypeError(type(value).__name__)
    plain = value.item()
    return plain if type(plain) in _PLAIN or type(plain) is float else f"{value}"
