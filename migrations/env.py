"""Alembic environment: jobqueue passes its engine in `config.attributes["engine"]`; by hand, the URL in alembic.ini."""

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = engine_from_config(
        config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool
    )

with engine.connect() as connection:
    # render_as_batch: SQLite can only ALTER a table by copying it, which batch mode does for us.
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
