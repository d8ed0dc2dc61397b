"""`jq db copy`: move a queue with its whole history between SQLite and PostgreSQL (either way)."""

from __future__ import annotations

import sqlalchemy as sa

from jobqueue.db import Database
from jobqueue.errors import UserError
from jobqueue.models import metadata
from jobqueue.paths import redacted

CHUNK = 5000


def copy_queue(src: Database, dst: Database) -> dict[str, int]:
    """Copy every table, ids included, in one transaction on the destination. It must hold no runs yet."""
    tables = list(metadata.sorted_tables)  # parents before children, for the foreign keys
    with dst.begin(write=False) as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(metadata.tables["runs"])).scalar():
            raise UserError(f"{dst.path or redacted(dst.url)}: already holds runs; copy into a new, empty DB")
    copied = {}
    with src.begin(write=False) as reader, dst.begin() as writer:
        for table in tables:
            rows = reader.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()
            n = 0
            while chunk := rows.fetchmany(CHUNK):
                writer.execute(table.insert(), [dict(r) for r in chunk])
                n += len(chunk)
            copied[table.name] = n
        if not dst.is_sqlite:
            # Explicit ids do not move PostgreSQL's sequences: set each past the largest copied id.
            for table in (t for t in tables if "id" in t.columns):
                writer.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                    )
                )
    return copied
