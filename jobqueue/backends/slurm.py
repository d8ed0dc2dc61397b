"""Slurm backend (see issue: arrays of workers). Filled in below."""

from __future__ import annotations

from jobqueue.db import Database
from jobqueue.errors import UserError


def check_settings(db: Database, settings: dict) -> None:
    raise UserError("--backend slurm is not available yet")


def launch(db: Database, run: dict, settings: dict) -> int:
    raise UserError("--backend slurm is not available yet")


def cancel_run(db: Database, run: dict) -> list[str]:
    return []
