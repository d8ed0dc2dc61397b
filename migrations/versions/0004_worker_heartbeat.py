"""Each worker's own heartbeat interval, so that `jq status` marks a worker silent after two of its own missed
heartbeats, not two of the default's.

No table is rebuilt: on SQLite a nullable column is added in place. Workers registered before it have NULL there,
read as the default interval.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("heartbeat_seconds", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("heartbeat_seconds")
