"""The tables, exactly as the Alembic migrations make them (a test compares the two).

Table and column names are an interface: users query them with `jq sql`. Times are naive UTC, in
columns named `*_at` (queue.py's plain SQL decodes them by that name; a test holds every table to it).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("sweep", sa.Text, nullable=False),  # the module or file it was enqueued from
    sa.Column("train_dir", sa.Text, nullable=False),
    sa.Column("suffix", sa.String(255), nullable=False, server_default=""),
    sa.Column("cwd", sa.Text, nullable=False),
    sa.Column("settings", sa.JSON, nullable=True),  # default launch settings, then what `jq launch` used
    sa.Column("created_at", sa.DateTime, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_jobs_run"), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),  # position in the sweep's expansion
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("experiment", sa.String(255), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("argv", sa.JSON, nullable=False),
    sa.Column("cmd", sa.Text, nullable=False),
    sa.Column("env", sa.JSON, nullable=True),
    sa.Column("cwd", sa.Text, nullable=False),
    sa.Column("root_dir", sa.Text, nullable=False),
    sa.Column("log_dir", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # claims so far
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),  # failed or timed-out attempts
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("timeout", sa.Float, nullable=True),
    sa.Column("worker_id", sa.Integer, nullable=True),  # the worker running it now
    sa.Column("exit_code", sa.Integer, nullable=True),  # of the last attempt
    sa.Column("signal", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=True),
    sa.Column("ended_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("run_id", "name", name="uq_jobs_run_name"),
    sa.Index("ix_jobs_state_id", "state", "id"),  # claim: the oldest queued job
    sa.Index("ix_jobs_run_state_id", "run_id", "state", "id"),  # claim within a run, status counts
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_attempts_job"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.Integer, nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("gpus", sa.String(255), nullable=True),
    sa.Column("slot", sa.Integer, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("signal", sa.Integer, nullable=True),
    sa.Column("log_path", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
    sa.Index("ix_attempts_state_worker", "state", "worker_id"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_started", sa.Float, nullable=True),  # process start time: tells a reused PID apart
    sa.Column("boot_id", sa.String(64), nullable=True),  # tells a rebooted host apart
    sa.Column("gpus", sa.String(255), nullable=True),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=True),
    sa.Column("slurm_job_id", sa.String(64), nullable=True),
    sa.Column("slurm_array_task_id", sa.Integer, nullable=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    sa.Column("stopped_at", sa.DateTime, nullable=True),
    sa.Column("heartbeat_seconds", sa.Float, nullable=True),  # its --heartbeat; NULL before migration 0004
    sa.Index("ix_workers_stopped", "stopped_at"),
)

submissions = sa.Table(
    "submissions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", name="fk_submissions_run"), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),  # slurm or ngc
    sa.Column("mode", sa.String(32), nullable=False),  # workers or per-job
    sa.Column("job_id", sa.Integer, nullable=True),  # the one job, in per-job mode
    sa.Column("external_id", sa.String(64), nullable=True),  # Slurm or NGC job id
    sa.Column("tasks", sa.Integer, nullable=True),  # array size
    sa.Column("state", sa.String(32), nullable=False),  # submitted, failed, cancelled, or the backend's word
    sa.Column("command", sa.JSON, nullable=False),
    sa.Column("stdout", sa.Text, nullable=True),
    sa.Column("stderr", sa.Text, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("submitted_at", sa.DateTime, nullable=False),
    sa.Index("ix_submissions_run", "run_id"),
    sa.Index("ix_submissions_job", "job_id"),  # a job's own submissions (per-job mode), migration 0005
)

# --- metrics: what the jobs achieved (jobqueue/metrics.py reads them, jobqueue/results.py stores and reports) ---
# A value is a float; NaN is stored as NULL on both databases (SQLite has no NaN, and PostgreSQL's NaN sorts
# above every number, which would make max() and ORDER BY lie), so SQL aggregates skip it as they skip NULL.
# ±Infinity are stored as they are: both databases keep them.

metric_points = sa.Table(
    "metric_points",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),  # also the order of arrival
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_points_job"), nullable=False),
    sa.Column("attempt_id", sa.Integer, sa.ForeignKey("attempts.id", name="fk_metric_points_attempt"), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=True),  # Sample Factory steps by env steps, past 2**31
    sa.Column("value", sa.Float, nullable=True),  # NULL: NaN
    sa.Column("wall_time", sa.Float, nullable=True),  # seconds since the epoch, as TensorBoard keeps it
    sa.Index("ix_metric_points_curve", "job_id", "key", "attempt_id", "step"),  # one job's curve of one key
)

metric_summaries = sa.Table(
    "metric_summaries",
    metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_summaries_job"), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),  # the order the job first logged its keys in: 0 for the first
    sa.Column("last", sa.Float, nullable=True),  # the value at the highest step (the newest among equal steps)
    sa.Column("last_step", sa.BigInteger, nullable=True),
    sa.Column("min", sa.Float, nullable=True),  # over the values that are not NaN
    sa.Column("max", sa.Float, nullable=True),
    sa.Column("count", sa.Integer, nullable=False),  # points, NaN included, over all attempts
    sa.Index("ix_metric_summaries_lasts", "job_id", "key", "seq", "last"),  # `jq results` reads no table row
)

metric_sources = sa.Table(  # the files a job's metrics are read from, and how far
    "metric_sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", name="fk_metric_sources_job"), nullable=False),
    sa.Column("attempt_id", sa.Integer, sa.ForeignKey("attempts.id", name="fk_metric_sources_attempt"), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # jsonl or tfevents
    sa.Column("bytes_read", sa.BigInteger, nullable=False),  # whole lines or records up to here are in metric_points
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),  # malformed lines or records, refused keys
    sa.Column("read_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("job_id", "path", name="uq_metric_sources_job_path"),
)
