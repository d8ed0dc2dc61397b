"""NGC backend. Filled in below."""

from __future__ import annotations

from jobqueue.db import Database
from jobqueue.errors import UserError


def check_settings(db: Database, settings: dict) -> None:
    raise UserError("--backend ngc is not available yet")


def launch(db: Database, run: dict, settings: dict) -> int:
    raise UserError("--backend ngc is not available yet")


def cancel_run(db: Database, run: dict) -> list[str]:
    return []


def refresh_states(db: Database, run: str | None) -> None:
    return None
