"""The backend interface and the registry of backends: the only place that knows their names.

A backend starts a run's workers somewhere (this machine, Slurm, NGC), describes the live state of what it
submitted, and cancels it. Each is imported only when a run uses it: a local launch never imports Slurm's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from jobqueue.db import Database
    from jobqueue.settings import LaunchSettings

# name -> the module whose BACKEND implements it
_MODULES = {
    "processes": "jobqueue.backends.processes",
    "slurm": "jobqueue.backends.slurm",
    "ngc": "jobqueue.backends.ngc",
}
BACKEND_NAMES = tuple(_MODULES)


class Backend(Protocol):
    name: str
    # Whether `start` says for itself that nothing is queued (a resume then leaves it to the backend).
    reports_nothing_queued: bool

    def check(self, db_url: str, settings: LaunchSettings) -> None:
        """Raise UserError for settings this backend cannot run with, before the DB is touched."""

    def start(self, db: Database, run: dict, settings: LaunchSettings, progress: bool) -> int:
        """Start (or run) the run's workers; the launch's exit code."""

    def live_states(self, submissions: list[dict]) -> dict[int, str]:
        """A readable live state per submission id, for `jq status` (only for submissions it can ask about)."""

    def cancel(self, db: Database, run: dict) -> list[str]:
        """Cancel what was submitted for the run; lines telling what was done."""


def get_backend(name: str) -> Backend:
    return importlib.import_module(_MODULES[name]).BACKEND
