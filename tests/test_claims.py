"""Claims on PostgreSQL without a ping before each: a pooled connection whose server end is gone is found
without a round trip and replaced, so a long-lived worker's next claim goes through; a live one is kept."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

from jobqueue import queue
from jobqueue.db import _closed_by_server, open_db
from jobqueue.sweep import JobSpec

pytestmark = pytest.mark.postgres


def _queue_of(url: str, jobs: int):
    db = open_db(url)
    specs = [
        JobSpec(name=f"j{i}", experiment="e", params={}, argv=["true"], cmd="true", root_dir="r", experiment_dir="r/e")
        for i in range(jobs)
    ]
    queue.enqueue(db, "claims", specs, sweep="s", train_dir="td")
    worker = queue.register_worker(db, slots=1, gpus=None, backend="test", run_id=None)
    return db, worker


def _backend_pids(db) -> set[int]:
    """The server processes of the connections waiting in the pool."""
    return {record.dbapi_connection.info.backend_pid for record in db.engine.pool._pool.queue}


def test_a_claim_after_the_server_dropped_the_pooled_connection_goes_through(postgres_server):
    db, worker = _queue_of(postgres_server.create_database(f"jq_claims_dropped_{os.getpid()}"), 2)
    try:
        first = queue.claim_next_job(db, worker, slot=0, gpus=None)
        pids = _backend_pids(db)
        with psycopg.connect(
            host=str(postgres_server.root), port=postgres_server.port, user="postgres", dbname="postgres"
        ) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),))
        # Terminated means hung up, as a restart leaves them: wait for the server's goodbye to reach each pooled
        # connection (a backend leaves pg_stat_activity a moment before its socket is closed).
        deadline = time.monotonic() + 10
        while not all(_closed_by_server(record.dbapi_connection) for record in db.engine.pool._pool.queue):
            assert time.monotonic() < deadline, "the terminated backends did not hang up"
            time.sleep(0.01)
        second = queue.claim_next_job(db, worker, slot=0, gpus=None)
        assert first is not None and second is not None and {first.job_id, second.job_id} == {1, 2}
        assert _backend_pids(db) - pids  # a new connection served it
    finally:
        db.dispose()


def test_a_live_pooled_connection_is_kept_from_claim_to_claim(postgres_server):
    db, worker = _queue_of(postgres_server.create_database(f"jq_claims_kept_{os.getpid()}"), 3)
    try:
        queue.claim_next_job(db, worker, slot=0, gpus=None)
        pids = _backend_pids(db)
        queue.claim_next_job(db, worker, slot=0, gpus=None)
        queue.claim_next_job(db, worker, slot=0, gpus=None)
        assert _backend_pids(db) == pids
    finally:
        db.dispose()


def _terminate(postgres_server, pids) -> None:
    with psycopg.connect(
        host=str(postgres_server.root), port=postgres_server.port, user="postgres", dbname="postgres"
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),))


def test_a_kept_connection_serves_every_claim_of_its_thread_is_replaced_when_dropped_and_goes_back(postgres_server):
    """A worker's loop thread claims on one connection it keeps (no checkout and return per claim); one the server
    closed is replaced at the next claim, and when the block ends the connection waits in the pool again."""
    db, worker = _queue_of(postgres_server.create_database(f"jq_claims_thread_{os.getpid()}"), 4)
    try:
        with db.kept_connection():
            queue.claim_next_job(db, worker, slot=0, gpus=None)
            kept = db._kept.conn
            pid = kept.dbapi_connection.info.backend_pid
            assert db.engine.pool.checkedout() == 1
            queue.claim_next_job(db, worker, slot=0, gpus=None)
            assert db._kept.conn is kept and db.engine.pool.checkedout() == 1
            _terminate(postgres_server, [pid])
            deadline = time.monotonic() + 10
            while not _closed_by_server(kept.dbapi_connection):
                assert time.monotonic() < deadline, "the terminated backend did not hang up"
                time.sleep(0.01)
            third = queue.claim_next_job(db, worker, slot=0, gpus=None)
            assert third is not None and third.job_id == 3
            assert db._kept.conn.dbapi_connection.info.backend_pid != pid
        assert db.engine.pool.checkedout() == 0
        assert queue.claim_next_job(db, worker, slot=0, gpus=None).job_id == 4  # from the pool, as before
    finally:
        db.dispose()
