"""Launch settings: every option of `jq launch` / `jq resume` once, typed, with its default, its Sample Factory
spellings, its validation and how it is stored in the run's `settings` JSON.

Where a setting comes from, lowest first (`LaunchSettings.merge`):
defaults < the sweep file's `RunDescription(...)` keywords < what the run's last launch recorded < flags given now.
The CLI builds a `LaunchSettings`; backends and the worker receive it (or what they need of it), never a dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from jobqueue.backends.base import BACKEND_NAMES
from jobqueue.errors import UserError

# The version written with every stored row. Rows without one (version 1) used the same flat keys and could
# hold the sweep file's Sample Factory spellings (`use_gpus`) as given; both read the same way.
STORED_VERSION = 2
_NOT_SETTINGS = frozenset({"version", "executes"})  # other keys the run's settings JSON holds


@dataclass(frozen=True)
class SlurmSettings:
    gpus_per_job: int = 1
    cpus_per_gpu: int = 14
    partition: str | None = None
    timeout: str = "0"  # Sample Factory's: timeout(1)'s duration for $TIMEOUT in the sbatch template; 0 = none
    time_limit: str | None = None  # sbatch --time, in Slurm's format
    workdir: str = "./slurm"
    sbatch_template: str | None = None
    workers: int | None = None  # array tasks; None: one per queued job
    max_running: int | None = None  # the array's %throttle
    mode: str = "workers"  # workers (an array draining the queue) or per-job (one sbatch per experiment)
    signal_lead: int = 60  # seconds of USR1 warning before a time limit or preemption
    print_only: bool = False  # a property of one call, never recorded

    @property
    def cpus_per_task(self) -> int:
        return self.gpus_per_job * self.cpus_per_gpu if self.gpus_per_job > 0 else self.cpus_per_gpu


@dataclass(frozen=True)
class NgcSettings:
    job_template: str | None = None
    workers: int | None = None  # NGC jobs that each run a worker; None: one NGC job per experiment
    print_only: bool = False  # a property of one call, never recorded


@dataclass(frozen=True)
class LaunchSettings:
    backend: str = "processes"
    num_gpus: int = 1  # GPUs 0..N-1, as Sample Factory's --num_gpus
    gpus: str | None = None  # exactly these GPUs, e.g. "0,2" (instead of num_gpus)
    experiments_per_gpu: int = -1  # > 0: pin each job to one GPU, at most this many per GPU; -1: leave them alone
    max_parallel: int = 4  # jobs at once on this machine; NGC submissions at once
    pause_between: float = 0.0  # seconds between job starts (Sample Factory's default is 1)
    timeout: float | None = None  # seconds before a job is stopped and recorded as timeout
    max_attempts: int = 1
    slots: int = 1  # jobs at once per Slurm/NGC worker
    grace: float | None = None  # seconds after TERM before KILL; None: the backend's default
    metrics_every: float | None = None  # seconds between reads of a running job's metrics; None: the worker's default
    lease: float | None = None  # seconds a silent worker keeps its jobs (the outage it rides out); None: the default
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    ngc: NgcSettings = field(default_factory=NgcSettings)

    def gpu_list(self) -> list[str]:
        if self.gpus:
            return [g.strip() for g in self.gpus.split(",") if g.strip()]
        return [str(i) for i in range(self.num_gpus)]

    def to_stored(self) -> dict[str, Any]:
        """What a launch records for a later resume: every setting under its stored key, but those that belong
        to one call (print-only)."""
        flat = {name: getattr(self, name) for name in sorted(_TOP)}
        flat |= {f"slurm_{f.name}": getattr(self.slurm, f.name) for f in fields(SlurmSettings)}
        flat |= {f"ngc_{f.name}": getattr(self.ngc, f.name) for f in fields(NgcSettings)}
        return {"version": STORED_VERSION, **{k: v for k, v in flat.items() if not k.endswith("_print_only")}}

    @classmethod
    def merge(cls, *layers: Mapping[str, Any]) -> LaunchSettings:
        """Settings from layers of stored keys (each from `parse`), later layers winning."""
        flat: dict[str, Any] = {}
        for layer in layers:
            flat.update(layer)
        top = {k: v for k, v in flat.items() if k in _TOP}
        slurm = {k[len("slurm_") :]: v for k, v in flat.items() if k.startswith("slurm_")}
        ngc = {k[len("ngc_") :]: v for k, v in flat.items() if k.startswith("ngc_")}
        return cls(**top, slurm=SlurmSettings(**slurm), ngc=NgcSettings(**ngc))


# --- parsing and validation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a layer of settings comes from, to name it in an error."""

    where: str  # "flags", "sweep", "recorded"
    name: str = ""  # the sweep file, or the run

    def spell(self, key: str, value: Any = ...) -> str:
        """The setting as the user wrote it: `--max-parallel 0`, `x.py: RunDescription(max_parallel=0)`."""
        if self.where == "flags":
            return "--" + key.replace("_", "-") + ("" if value is ... else f" {value!r}")
        shown = "..." if value is ... else repr(value)
        if self.where == "sweep":
            return f"{self.name}: RunDescription({key}={shown})"
        return f"run {self.name!r}: its recorded setting {key}={shown}"


FLAGS = Source("flags")


class _Expected(ValueError):
    """What a setting's value should have been, for the error message."""


def _integer(minimum: int | None = None) -> Callable[[Any], int]:
    expected = "a whole number" + (f" of at least {minimum}" if minimum is not None else "")

    def convert(value: Any) -> int:
        try:
            number = int(value) if not isinstance(value, (bool, float)) or value == int(value) else None
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or isinstance(value, bool) or minimum is not None and number < minimum:
            raise _Expected(expected)
        return number

    return convert


def _number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:  # also NaN
        raise _Expected("a number of seconds, 0 or more")
    return number


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Expected("text")
    return str(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t", "on"):
        return True
    if text in ("0", "false", "no", "n", "f", "off", ""):
        return False
    raise _Expected("true or false")


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise _Expected("one of " + ", ".join(choices))
        return str(value)

    return convert


def _gpus(value: Any) -> str:
    text = str(value)
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise _Expected("GPU indices like 0,2")
    return ",".join(ids)


# Slurm's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; 0 or "UNLIMITED".
_SLURM_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|unlimited)$"
)


def _slurm_time(value: Any) -> str:
    text = str(value).strip()
    if not _SLURM_TIME.match(text):
        raise _Expected("a time in Slurm's format: minutes, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. 2-00:00:00)")
    return text


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


# Every stored key, how its value is checked, and the other spellings it is accepted under.
CONVERT: dict[str, Callable[[Any], Any]] = {
    "backend": _one_of(*BACKEND_NAMES),
    "num_gpus": _integer(0),
    "gpus": _optional(_gpus),
    "experiments_per_gpu": _integer(),
    "max_parallel": _integer(1),
    "pause_between": _number,
    "timeout": _optional(_number),
    "max_attempts": _integer(1),
    "slots": _integer(1),
    "grace": _optional(_number),
    "metrics_every": _optional(_number),
    "lease": _optional(_number),
    "slurm_gpus_per_job": _integer(0),
    "slurm_cpus_per_gpu": _integer(1),
    "slurm_partition": _optional(_text),
    "slurm_timeout": _text,
    "slurm_time_limit": _optional(_slurm_time),
    "slurm_workdir": _text,
    "slurm_sbatch_template": _optional(_text),
    "slurm_workers": _optional(_integer(1)),
    "slurm_max_running": _optional(_integer(1)),
    "slurm_mode": _one_of("workers", "per-job"),
    "slurm_signal_lead": _integer(0),
    "slurm_print_only": _flag,
    "ngc_job_template": _optional(_text),
    "ngc_workers": _optional(_integer(1)),
    "ngc_print_only": _flag,
}
ALIASES = {
    "use_gpus": "num_gpus",  # Sample Factory 1.x's RunDescription keyword
    "pause_between_experiments": "pause_between",  # likewise
}
_TOP = frozenset(f.name for f in fields(LaunchSettings)) - {"slurm", "ngc"}


def parse(raw: Mapping[str, Any] | None, source: Source) -> dict[str, Any]:
    """One layer of settings under their stored keys, checked. Unknown keys are an error, except in what a
    run recorded (a newer jobqueue may have written keys this one does not know)."""
    items = list((raw or {}).items())
    if source.where == "recorded" and "version" not in (raw or {}):
        # A version-1 row holds the defaults merged in beside the sweep file's own spellings (`num_gpus: 1` beside
        # `use_gpus: 2`); the spelling the user wrote wins.
        items.sort(key=lambda item: item[0] in ALIASES)
    layer: dict[str, Any] = {}
    for given, value in items:
        key = ALIASES.get(given.replace("-", "_"), given.replace("-", "_"))
        if key in _NOT_SETTINGS or value is None:
            continue
        convert = CONVERT.get(key)
        if convert is None:
            if source.where == "recorded":
                continue
            raise UserError(f"{source.spell(given, value)}: not a launch setting; {_suggest(key)}")
        try:
            layer[key] = convert(value)
        except _Expected as exc:
            raise UserError(f"{source.spell(given, value)}: expected {exc}") from None
    return layer


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [*CONVERT, *ALIASES], n=1)
    return f"did you mean {close[0]}?" if close else "use one of " + ", ".join(sorted(CONVERT))
