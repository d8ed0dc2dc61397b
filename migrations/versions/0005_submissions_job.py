"""An index on each submission's job, for the launch that submits a run job by job.

A launch in per-job mode reads the run's queued jobs a page at a time, each without a submission still standing:
with this index each job's submissions are looked up, where without it every page read all the run's submissions
(a 200,000-job launch with half of them submitted took 18 s to list). No table is rebuilt: on SQLite an index is
added in place.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_submissions_job", "submissions", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_submissions_job", "submissions")
