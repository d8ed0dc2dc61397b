"""What the dashboard's JSON endpoints return: runs, a run's jobs a page at a time, its attempts for the
timeline, its results for the plots, a job with its attempts, and a piece of a job's log.

Each call reads one short read-only snapshot (readonly.py). The reads a page repeats every few seconds -- a run's
counts and ETA, a page of its jobs, the attempts opened or ended since the last poll, a log's new bytes -- are
index and primary-key reads that cost the same on a million-job DB; what reads a whole run (the plots' data, the
run's parameters and metric keys, sorting by anything but id) is asked for when something has changed.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime

from jobqueue import results, sql
from jobqueue.errors import UserError
from jobqueue.progress import DONE_STATES, FINISHED_STATES, time_left
from jobqueue.report import STATES
from jobqueue.states import AttemptState, JobState, literal
from jobqueue.ui.counts import LiveCounts
from jobqueue.ui.readonly import ReadOnlyDB, Snapshot

PAGE_SIZES = (25, 50, 100, 250, 500)
TIMELINE_ATTEMPTS = 5000  # the newest attempts the timeline draws
PLOT_JOBS = 20_000  # jobs the results plots draw at most (a sample of a bigger run)
CURVE_POINTS = 2000  # per learning curve, evenly thinned
CURVES_AT_ONCE = 20
LOG_TAIL = 64 * 1024  # bytes of a log the job page shows first
LOG_CHUNK = 256 * 1024  # bytes a poll of a growing log returns at most
DURATION_SAMPLE = 100  # finished jobs whose mean duration gives the ETA (as the progress view takes them)
LIVE_STATES_FOR = 10.0  # seconds a backend's answer (squeue) is shown before it is asked again


class NotFound(UserError):
    """No such run, job or attempt: HTTP 404."""


def jsonable(value):
    """A value for strict JSON: times as ISO 8601 UTC, NaN and the infinities as results.py spells them."""
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, float) and not math.isfinite(value):
        return results.number_text(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def to_json(value) -> str:
    return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))


# --- runs -----------------------------------------------------------------------------------------

_RUNS = "SELECT id, name, sweep, train_dir, settings, created_at FROM runs ORDER BY id"
_RUN = "SELECT id, name, sweep, train_dir, cwd, settings, created_at FROM runs WHERE id = :run_id"
_SUBMISSIONS = (
    "SELECT id, run_id, backend, mode, external_id, tasks, state, job_id, exit_code, submitted_at "
    "FROM submissions ORDER BY id"
)
_FIRST_START = (
    "SELECT a.started_at FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.run_id = :run_id ORDER BY a.id LIMIT 1"
)
# As the progress view reads them (progress.py): recent finished jobs' durations, the running jobs, live slots.
# The seconds are worked out by the DB: decoding hundreds of times in Python would cost more than the reads.
_SECONDS = {
    sql.SQLITE: "(julianday({end}) - julianday(started_at)) * 86400.0",
    sql.POSTGRESQL: "CAST(EXTRACT(EPOCH FROM {end} - started_at) AS DOUBLE PRECISION)",
}
_RECENT_DURATIONS = (
    "SELECT ended_at, {seconds} FROM jobs WHERE run_id = :run_id AND state = :state "
    "AND started_at IS NOT NULL AND ended_at IS NOT NULL ORDER BY id DESC LIMIT :sample"
)
_RUNNING_FOR = f"SELECT {{seconds}} FROM jobs WHERE run_id = :run_id AND state = {literal(JobState.RUNNING)}"
_LIVE_SLOTS = "SELECT coalesce(sum(slots), 0) FROM workers WHERE run_id = :run_id AND stopped_at IS NULL"


class Dashboard:
    """The endpoints' data, over one DB. Thread-safe: every call reads its own snapshot."""

    def __init__(self, db: ReadOnlyDB, counts: LiveCounts | None = None):
        self.db = db
        self.counts = counts or LiveCounts(db)
        self._first_start: dict[int, datetime] = {}  # a run's first attempt never changes once it is there
        self._live_states: tuple[float, dict[int, str]] = (float("-inf"), {})
        self._live_lock = threading.Lock()

    def runs(self) -> list[dict]:
        """Every run: its counts, progress and ETA, backend, when it was enqueued and started, its submissions."""
        counts = self.counts.current()
        with self.db.snapshot() as snap:
            submissions = self._submissions(snap)
            return [
                self._run_summary(snap, run, counts.get(run["id"], {}), submissions.get(run["id"], []))
                for run in snap.dicts(_RUNS)
            ]

    def run(self, run_id: int) -> dict:
        counts = self.counts.current()
        with self.db.snapshot() as snap:
            run = _one(snap.dicts(_RUN, {"run_id": run_id}), f"no run with id {run_id}")
            return self._run_summary(snap, run, counts.get(run_id, {}), self._submissions(snap).get(run_id, []))

    def _run_summary(self, snap: Snapshot, run: dict, counts: dict, submissions: list[dict]) -> dict:
        counts = {**dict.fromkeys(STATES, 0), **counts}
        total, done = sum(counts.values()), sum(counts[s.value] for s in DONE_STATES)
        settings = run.get("settings") or {}
        return {
            "id": run["id"],
            "name": run["name"],
            "sweep": run["sweep"],
            "train_dir": run["train_dir"],
            "backend": settings.get("backend"),
            "max_parallel": settings.get("max_parallel"),
            "created_at": run["created_at"],
            "started_at": self._started(snap, run["id"]),
            "counts": counts,
            "total": total,
            "done": done,
            **_estimate(snap, run["id"], counts),
            "submissions": submissions,
        }

    def _started(self, snap: Snapshot, run_id: int) -> datetime | None:
        if run_id not in self._first_start:
            row = snap.rows(_FIRST_START, {"run_id": run_id})
            if not row:
                return None
            self._first_start[run_id] = sql.row_converter([("started_at",)])(row[0])["started_at"]
        return self._first_start[run_id]

    def _submissions(self, snap: Snapshot) -> dict[int, list[dict]]:
        """The runs' Slurm and NGC submissions, each with its live state where its backend tells one."""
        found: dict[int, list[dict]] = {}
        for s in snap.dicts(_SUBMISSIONS):
            found.setdefault(s.pop("run_id"), []).append(s)
        if found:
            live = self._live(snap, [s for subs in found.values() for s in subs])
            for subs in found.values():
                for s in subs:
                    s["state"] = live.get(s["id"], s["state"])
        return found

    def _live(self, snap: Snapshot, submissions: list[dict]) -> dict[int, str]:
        """Live states, asked of the backends (squeue) at most every LIVE_STATES_FOR seconds."""
        from jobqueue.backends.base import get_backend

        with self._live_lock:
            asked_at, states = self._live_states
            if time.monotonic() - asked_at >= LIVE_STATES_FOR:
                states = {}
                for backend in {s["backend"] for s in submissions}:
                    states.update(get_backend(backend).live_states([s for s in submissions if s["backend"] == backend]))
                self._live_states = (time.monotonic(), states)
            return states

    # --- a run's jobs -----------------------------------------------------------------------------

    def columns(self, run_id: int) -> dict:
        """The run's parameters, in sweep order, and its metric keys, the first-logged first."""
        with self.db.snapshot() as snap:
            _one(snap.rows("SELECT id FROM runs WHERE id = :run_id", {"run_id": run_id}), f"no run with id {run_id}")
            return {"params": results.run_param_names(snap, run_id), "metrics": results.run_metric_keys(snap, run_id)}

    def jobs(
        self,
        run_id: int,
        *,
        state: str | None = None,
        sort: str = "id",
        descending: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> dict:
        """A page of the run's jobs, filtered by state and sorted by a column, a parameter (`param:NAME`) or a
        metric's last value (`metric:KEY`); missing values last. `total` is how many match, from the counts."""
        if state is not None and state not in STATES:
            raise UserError(f"state {state!r}: unknown; use one of {', '.join(STATES)}")
        if limit not in PAGE_SIZES:
            raise UserError(f"limit {limit}: use one of {', '.join(map(str, PAGE_SIZES))}")
        if offset < 0:
            raise UserError("offset: must be 0 or more")
        counts = self.counts.of_run(run_id)
        with self.db.snapshot() as snap:
            _one(snap.rows("SELECT id FROM runs WHERE id = :run_id", {"run_id": run_id}), f"no run with id {run_id}")
            query, params = _page_query(snap, run_id, state, sort, descending)
            rows = snap.dicts(query, {**params, "run_id": run_id, "state": state, "limit": limit, "offset": offset})
            now = _db_now(snap)
            lasts = _last_values(snap, [r["id"] for r in rows])
        for r in rows:
            r["duration_s"] = _seconds(r["started_at"], r["ended_at"] or now) if r["started_at"] else None
            r["metrics"] = lasts.get(r["id"], {})
        return {
            "jobs": rows,
            "total": counts[state] if state else sum(counts.values()),
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "descending": descending,
            "state": state,
        }

    # --- the timeline ------------------------------------------------------------------------------

    def attempts(self, run_id: int, after: int = 0, open_ids: Sequence[int] = ()) -> dict:
        """The run's attempts for the timeline: the newest TIMELINE_ATTEMPTS at first (after=0), and whether
        there are older ones; then those opened after `after`, and those of `open_ids` (the ones the page shows
        running) that have ended since."""
        with self.db.snapshot() as snap:
            _one(snap.rows("SELECT id FROM runs WHERE id = :run_id", {"run_id": run_id}), f"no run with id {run_id}")
            now = _db_now(snap)
            if not after:
                rows = snap.dicts(
                    _ATTEMPTS.format(which="1 = 1", order="DESC"), {"run_id": run_id, "limit": TIMELINE_ATTEMPTS}
                )
                rows.reverse()
            else:  # two primary-key reads: with an OR between them, the planner would scan every attempt
                rows = snap.dicts(
                    _ATTEMPTS.format(which="a.id > :after", order="ASC"),
                    {"run_id": run_id, "after": after, "limit": TIMELINE_ATTEMPTS},
                )
                still_open = sorted(set(open_ids) - {r["id"] for r in rows})[: sql.IN_LIST_CHUNK]
                if still_open:
                    listed, params = sql.expand("open", still_open)
                    which = f"a.id IN ({listed}) AND a.state != {literal(AttemptState.RUNNING)}"
                    rows += snap.dicts(
                        _ATTEMPTS.format(which=which, order="ASC"),
                        {**params, "run_id": run_id, "limit": TIMELINE_ATTEMPTS},
                    )
            older = bool(not after and rows and snap.rows(_OLDER_ATTEMPT, {"run_id": run_id, "oldest": rows[0]["id"]}))
        return {"attempts": rows, "now": now, "older": older}

    # --- results -----------------------------------------------------------------------------------

    def results(self, run_id: int) -> dict:
        """The plots' data: each job with metrics, its parameters and each metric's last value; on a run of more
        than PLOT_JOBS jobs, every k-th job (`sampled`), so that the page draws what it can."""
        every = max(1, math.ceil(sum(self.counts.of_run(run_id).values()) / PLOT_JOBS))
        with self.db.snapshot() as snap:
            row = _one(
                snap.rows("SELECT name FROM runs WHERE id = :run_id", {"run_id": run_id}), f"no run with id {run_id}"
            )
            columns = results.result_columns(snap, row[0])
            jobs = [
                {
                    "id": r["id"],
                    "name": r["name"],
                    "state": r["state"],
                    "params": r["params"],
                    "last": {key: m["last"] for key, m in r["metrics"].items()},
                }
                for i, r in enumerate(results.results(snap, row[0]))
                if r["metrics"] and i % every == 0
            ]
        return {"params": columns.params, "metrics": columns.metrics, "jobs": jobs, "sampled": every > 1}

    def curves(self, key: str, job_ids: list[int]) -> dict:
        """One metric's points for each of these jobs, by step (a later attempt's point replaces an earlier one's
        at the same step), thinned to CURVE_POINTS."""
        if len(job_ids) > CURVES_AT_ONCE:
            raise UserError(f"jobs: at most {CURVES_AT_ONCE} curves at once")
        found = []
        with self.db.snapshot() as snap:
            for job_id in job_ids:
                row = snap.rows("SELECT name FROM jobs WHERE id = :job_id", {"job_id": job_id})
                if not row:
                    raise NotFound(f"no job with id {job_id}")
                by_step: dict = {}
                if key in results.job_metric_keys(snap, job_id):
                    for i, p in enumerate(results.metrics(snap, job_id, [key])):
                        by_step[p["step"] if p["step"] is not None else i] = p["value"]
                steps = sorted(by_step)
                found.append(
                    {
                        "id": job_id,
                        "name": row[0][0],
                        "steps": _thin(steps),
                        "values": _thin([by_step[s] for s in steps]),
                    }
                )
        return {"key": key, "jobs": found}

    # --- a job -------------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict:
        with self.db.snapshot() as snap:
            job = _one(snap.dicts(_JOB, {"job_id": job_id}), f"no job with id {job_id}")
            now = _db_now(snap)
            job["tries"] = snap.dicts(_JOB_ATTEMPTS, {"job_id": job_id})
            job["metrics"] = results.job_metric_keys(snap, job_id)
        for a in job["tries"]:
            a["duration_s"] = _seconds(a["started_at"], a["ended_at"] or now)
            a["has_log"] = bool(a.pop("log_path"))
        return job

    def log(self, job_id: int, attempt: int | None = None, offset: int | None = None) -> dict:
        """A piece of the log of one of the job's attempts (its newest by default): the last LOG_TAIL bytes at
        first, then up to LOG_CHUNK from `offset`. Only the file the DB records for that attempt is read: nothing
        from the request reaches the file system but two numbers."""
        if offset is not None and offset < 0:
            raise UserError("offset: must be 0 or more")
        with self.db.snapshot() as snap:
            _one(snap.rows("SELECT id FROM jobs WHERE id = :job_id", {"job_id": job_id}), f"no job with id {job_id}")
            rows = snap.rows(
                _LOG_PATH.format(which="number = :number" if attempt else "1 = 1"),
                {"job_id": job_id, "number": attempt},
            )
        if not rows:
            raise NotFound(f"job {job_id} has no attempt {attempt}" if attempt else f"job {job_id} has not run yet")
        number, state, path = rows[0]
        answer = {
            "attempt": number,
            "state": state,
            "path": path,
            "text": "",
            "offset": 0,
            "next_offset": 0,
            "size": None,
            "missing": False,
        }
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = max(0, size - LOG_TAIL) if offset is None else (offset if offset <= size else 0)  # 0: truncated
                f.seek(start)
                data = f.read(LOG_CHUNK)
        except (OSError, TypeError):  # TypeError: no path recorded
            answer["missing"] = True
            return answer
        if offset is None and start > 0:  # begin at a whole line
            cut = data.find(b"\n")
            start, data = (start + cut + 1, data[cut + 1 :]) if cut >= 0 else (start, data)
        if start + len(data) < size or state == "running":  # more to come: end at a whole line (and character)
            cut = max(data.rfind(b"\n"), data.rfind(b"\r"))  # a progress bar ends its updates with \r
            data = data[: cut + 1] if cut >= 0 else (data if len(data) == LOG_CHUNK else b"")
        answer.update(text=data.decode(errors="replace"), offset=start, next_offset=start + len(data), size=size)
        return answer


def _db_now(snap: Snapshot) -> datetime:
    """The database's clock (naive UTC), which the workers' times are in."""
    return snap.dicts("SELECT {now} AS now_at")[0]["now_at"]


def _one(rows: list, missing: str):
    if not rows:
        raise NotFound(missing)
    return rows[0]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def _estimate(snap: Snapshot, run_id: int, counts: dict) -> dict:
    """Seconds until the run is done, as the progress view estimates them (progress.time_left)."""
    ended = []
    for state in FINISHED_STATES:
        if counts[state.value]:
            query = _RECENT_DURATIONS.replace("{seconds}", _SECONDS[snap.dialect].replace("{end}", "ended_at"))
            ended += snap.rows(query, {"run_id": run_id, "state": state.value, "sample": DURATION_SAMPLE})
    ended.sort(reverse=True)  # the newest ends first (times of one dialect compare as they sort)
    seconds = [s for _, s in ended[:DURATION_SAMPLE]]
    mean = sum(seconds) / len(seconds) if seconds else None
    running = _RUNNING_FOR.replace("{seconds}", _SECONDS[snap.dialect].replace("{end}", "{now}"))
    running_for = [s for (s,) in snap.rows(running, {"run_id": run_id})]
    (slots,) = snap.rows(_LIVE_SLOTS, {"run_id": run_id})[0]
    parallel = max(int(slots), len(running_for))
    eta = None if mean is None else time_left(mean, running_for, counts[JobState.QUEUED.value], parallel)
    return {"mean_s": mean, "parallel": parallel, "eta_s": eta}


# --- the jobs table's query --------------------------------------------------------------------------

_PAGE = (
    "SELECT j.id, j.name, j.state, j.attempts, j.exit_code, j.signal, j.params, j.started_at, j.ended_at "
    "FROM jobs j {join}WHERE {where} ORDER BY {order} LIMIT :limit OFFSET :offset"
)
# Sorted by id without a state, the page is a walk of the primary key from the run's first (or last) job id,
# `+j.run_id` keeping the planner off the (run_id, name) index, which would sort the whole run.
_BY_ID = "+j.run_id = :run_id AND j.id BETWEEN :first AND :last"
# Each state's end of ix_jobs_run_state_id: the run's first and last job ids, in a dozen index reads.
_ID_RANGE = "SELECT min(lo), max(hi) FROM ({}) ends".format(
    " UNION ALL ".join(
        f"SELECT (SELECT min(id) FROM jobs WHERE run_id = :run_id AND state = '{s}') AS lo, "
        f"(SELECT max(id) FROM jobs WHERE run_id = :run_id AND state = '{s}') AS hi"
        for s in STATES
    )
)
_COLUMN_SORTS = {
    "name": "j.name",
    "state": "j.state",
    "attempts": "j.attempts",
    "exit_code": "j.exit_code",
    "started_at": "j.started_at",
    "ended_at": "j.ended_at",
}
_DURATION = {
    sql.SQLITE: "julianday(COALESCE(j.ended_at, {now})) - julianday(j.started_at)",
    sql.POSTGRESQL: "COALESCE(j.ended_at, {now}) - j.started_at",
}
_PARAM_VALUE = {  # JSON values compare as numbers, strings, ... (jsonb orders across types too)
    sql.SQLITE: "json_extract(j.params, :param_path)",
    sql.POSTGRESQL: "(CAST(j.params AS jsonb) -> CAST(:param AS text))",
}


def _page_query(snap: Snapshot, run_id: int, state: str | None, sort: str, descending: bool) -> tuple[str, dict]:
    direction = "DESC" if descending else "ASC"
    where = "j.run_id = :run_id" + (" AND j.state = :state" if state else "")
    params: dict = {}
    join = ""
    if sort == "id":
        if not state:
            first, last = snap.rows(_ID_RANGE, {"run_id": run_id})[0]
            where, params = _BY_ID, {"first": first or 0, "last": last or 0}
        return _PAGE.format(join=join, where=where, order=f"j.id {direction}"), params
    if sort in _COLUMN_SORTS:
        value = _COLUMN_SORTS[sort]
    elif sort == "duration":
        value = _DURATION[snap.dialect]
    elif sort.startswith("param:"):
        name = sort[len("param:") :]
        if '"' in name:
            raise UserError(f"sort {sort!r}: a parameter name with a double quote cannot be sorted by")
        value, params = _PARAM_VALUE[snap.dialect], {"param": name, "param_path": f'$."{name}"'}
    elif sort.startswith("metric:"):
        value, params = "s.last", {"key": sort[len("metric:") :]}
        join = "LEFT JOIN metric_summaries s ON s.job_id = j.id AND s.key = :key "
    else:
        raise UserError(
            f"sort {sort!r}: use id, name, state, attempts, exit_code, started_at, ended_at, duration, "
            "param:NAME or metric:KEY"
        )
    order = f"CASE WHEN {value} IS NULL THEN 1 ELSE 0 END, {value} {direction}, j.id {direction}"
    return _PAGE.format(join=join, where=where, order=order), params


_LASTS = "SELECT job_id, key, last FROM metric_summaries WHERE job_id IN ({ids})"


def _last_values(snap: Snapshot, job_ids: list[int]) -> dict[int, dict[str, float]]:
    """Each job's last value of each of its metrics (NaN for a NULL, as results.py reads them)."""
    found: dict[int, dict[str, float]] = {}
    for ids, params in sql.in_lists("id", job_ids):
        for job_id, key, last in snap.rows(_LASTS.format(ids=ids), params):
            found.setdefault(job_id, {})[key] = math.nan if last is None else last
    return found


_ATTEMPTS = (
    "SELECT a.id, a.job_id, j.name AS job, a.number, a.state, a.worker_id, a.host, a.slot, a.gpus, a.started_at, "
    "a.ended_at, a.exit_code, a.signal, a.reason, w.slurm_job_id, w.slurm_array_task_id "
    "FROM attempts a JOIN jobs j ON j.id = a.job_id LEFT JOIN workers w ON w.id = a.worker_id "
    "WHERE j.run_id = :run_id AND {which} ORDER BY a.id {order} LIMIT :limit"
)
# Whether the timeline leaves older attempts out (counting them all would read the whole run).
_OLDER_ATTEMPT = (
    "SELECT 1 FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.run_id = :run_id AND a.id < :oldest LIMIT 1"
)


def _thin(values: list) -> list:
    """At most CURVE_POINTS of `values`, evenly spaced, the last one kept."""
    if len(values) <= CURVE_POINTS:
        return values
    stride = len(values) / (CURVE_POINTS - 1)
    return [values[int(i * stride)] for i in range(CURVE_POINTS - 1)] + [values[-1]]


# --- a job ----------------------------------------------------------------------------------------

_JOB = (
    "SELECT j.id, j.run_id, r.name AS run, j.name, j.experiment, j.state, j.attempts, j.failures, j.max_attempts, "
    "j.timeout, j.exit_code, j.signal, j.params, j.argv, j.cmd, j.cwd, j.created_at, j.started_at, j.ended_at "
    "FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.id = :job_id"
)
_JOB_ATTEMPTS = (
    "SELECT id, number, state, host, pid, gpus, slot, worker_id, started_at, ended_at, exit_code, signal, reason, "
    "log_path FROM attempts WHERE job_id = :job_id ORDER BY number"
)
_LOG_PATH = (
    "SELECT number, state, log_path FROM attempts WHERE job_id = :job_id AND {which} ORDER BY number DESC LIMIT 1"
)
