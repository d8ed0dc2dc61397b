"""An index that holds what `jq results` reads of each job's summaries: its keys, their order and last values.

`jq results` looks up each job's last value of each key, and the run's keys in the order they were first logged;
the primary key (job_id, key) finds a summary, and this index also holds its seq and last, so neither read goes
to the table. No table is rebuilt: on SQLite an index is added in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_metric_summaries_lasts", "metric_summaries", ["job_id", "key", "seq", "last"])


def downgrade() -> None:
    op.drop_index("ix_metric_summaries_lasts", "metric_summaries")
