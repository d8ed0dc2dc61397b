"""Metrics: the points read from each job's files, a summary per job and key, and how far each file was read.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_points_job"), nullable=False),
        sa.Column(
            "attempt_id", sa.Integer, sa.ForeignKey("attempts.id", name="fk_metric_points_attempt"), nullable=False
        ),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=True),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("wall_time", sa.Float, nullable=True),
    )
    op.create_index("ix_metric_points_curve", "metric_points", ["job_id", "key", "attempt_id", "step"])
    op.create_table(
        "metric_summaries",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_summaries_job"), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("last", sa.Float, nullable=True),
        sa.Column("last_step", sa.BigInteger, nullable=True),
        sa.Column("min", sa.Float, nullable=True),
        sa.Column("max", sa.Float, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "metric_sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_sources_job"), nullable=False),
        sa.Column(
            "attempt_id", sa.Integer, sa.ForeignKey("attempts.id", name="fk_metric_sources_attempt"), nullable=False
        ),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("bytes_read", sa.BigInteger, nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("read_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("job_id", "path", name="uq_metric_sources_job_path"),
    )


def downgrade() -> None:
    for table in ("metric_sources", "metric_summaries", "metric_points"):
        op.drop_table(table)
