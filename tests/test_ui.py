"""`jq ui` over plain HTTP: a real sweep on SQLite and PostgreSQL, served by a real `jq ui` subprocess, read with
urllib -- the JSON endpoints agree with `jq status` and the DB, values that hold HTML stay inert, the log endpoint
reads only recorded logs, the DB is read-only and never holds a worker up, and only `jq ui` loads bottle."""

from __future__ import annotations

import html.parser
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import Project, refused
from tests.ui_support import EVIL, FAILING, JOBS, RUN, run_evil_sweep, start_ui, status

_databases = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def swept(request, tmp_path_factory):
    """The evil sweep run to its end, and `jq ui` serving it (one per DB for the module's tests)."""
    path = tmp_path_factory.mktemp("ui")
    if request.param == "sqlite":
        db = str(path / "jobqueue.db")
    else:
        db = request.getfixturevalue("postgres_server").create_database(f"jq_ui_{os.getpid()}_{next(_databases)}")
    project = Project(path, db)
    run = run_evil_sweep(project)
    ui = start_ui(project, "--interval", "0.5")
    yield project, run, ui
    ui.stop()


def run_id(ui) -> int:
    (run,) = ui.get("/api/runs")[1]
    return run["id"]


def test_runs_and_counts_are_jq_statuss(swept):
    project, status_run, ui = swept
    code, runs = ui.get("/api/runs")
    assert code == 200
    (run,) = runs
    assert run["name"] == RUN
    assert run["counts"] == status_run["counts"] and run["total"] == JOBS == run["done"]
    assert run["counts"]["failed"] == FAILING and run["backend"] == "processes"
    assert run["started_at"] and run["eta_s"] == 0
    code, one = ui.get(f"/api/runs/{run['id']}")
    assert code == 200 and one["counts"] == status_run["counts"] and one["mean_s"] > 0
    assert ui.get("/api/runs/999")[0] == 404


def test_a_page_of_jobs_filters_and_sorts_by_columns_parameters_and_metrics(swept):
    project, _, ui = swept
    rid = run_id(ui)
    listed = {job["id"]: job for job in project.jobs()}
    code, page = ui.get(f"/api/runs/{rid}/jobs")
    assert code == 200 and page["total"] == JOBS
    assert [j["id"] for j in page["jobs"]] == sorted(listed)
    assert {j["id"]: j["state"] for j in page["jobs"]} == {i: j["state"] for i, j in listed.items()}
    assert all(j["params"]["note"] == EVIL and "loss" in j["metrics"] and j["duration_s"] > 0 for j in page["jobs"])

    failed = ui.get(f"/api/runs/{rid}/jobs?state=failed")[1]
    assert failed["total"] == FAILING and {j["exit_code"] for j in failed["jobs"]} == {3}
    assert {j["params"]["lr"] for j in failed["jobs"]} == {-1.0}

    by_loss = ui.get(f"/api/runs/{rid}/jobs?sort=metric:loss&order=desc")[1]["jobs"]
    losses = [j["metrics"]["loss"] for j in by_loss]
    assert losses == sorted(losses, reverse=True) and len(losses) == JOBS
    by_lr = ui.get(f"/api/runs/{rid}/jobs?sort=param:lr")[1]["jobs"]
    assert [j["params"]["lr"] for j in by_lr] == [-1.0, -1.0, 0.1, 0.1, 0.3, 0.3]
    newest_first = ui.get(f"/api/runs/{rid}/jobs?order=desc")[1]["jobs"]
    assert [j["id"] for j in newest_first] == sorted(listed, reverse=True)
    for sort in ("name", "state", "attempts", "exit_code", "started_at", "ended_at", "duration", "metric:nothing"):
        code, sorted_page = ui.get(f"/api/runs/{rid}/jobs?sort={sort}")
        assert code == 200 and sorted(j["id"] for j in sorted_page["jobs"]) == sorted(listed), sort

    for bad in ("sort=cmd", "sort=id;drop", "state=lost", "limit=7", "offset=-1", "limit=x"):
        code, answer = ui.get(f"/api/runs/{rid}/jobs?{bad}")
        assert code == 400 and answer["error"], bad


def test_attempts_results_curves_and_a_job(swept):
    project, _, ui = swept
    rid = run_id(ui)
    (count,) = project.sql("select count(*) as n from attempts")
    timeline = ui.get(f"/api/runs/{rid}/attempts")[1]
    assert len(timeline["attempts"]) == count["n"] == JOBS and timeline["older"] is False
    assert {a["job"] for a in timeline["attempts"]} == {j["name"] for j in project.jobs()}
    assert all(a["worker_id"] and a["slot"] is not None and a["ended_at"] for a in timeline["attempts"])
    newest = max(a["id"] for a in timeline["attempts"])
    assert ui.get(f"/api/runs/{rid}/attempts?after={newest}")[1]["attempts"] == []
    again = ui.get(f"/api/runs/{rid}/attempts?after={newest}&open={newest}")[1]["attempts"]
    assert [a["id"] for a in again] == [newest]

    columns = ui.get(f"/api/runs/{rid}/columns")[1]
    assert columns == {"params": ["seed", "lr", "note"], "metrics": ["loss"]}
    results = ui.get(f"/api/runs/{rid}/results")[1]
    assert results["metrics"] == ["loss"] and len(results["jobs"]) == JOBS
    curves = ui.get("/api/curves?key=loss&jobs=1,2")[1]
    assert [c["steps"] for c in curves["jobs"]] == [[0, 10, 20, 30, 40]] * 2
    assert ui.get("/api/curves?key=loss&jobs=999")[0] == 404
    assert ui.get("/api/curves?jobs=1")[0] == 400

    job = ui.get("/api/jobs/1")[1]
    assert job["run"] == RUN and job["params"]["note"] == EVIL and job["metrics"] == ["loss"]
    assert [a["number"] for a in job["tries"]] == [1] and job["tries"][0]["has_log"]
    assert "log_path" not in job["tries"][0] and "env" not in job
    assert ui.get("/api/jobs/999")[0] == 404


def test_the_log_endpoint_reads_only_the_log_the_db_records(swept):
    project, _, ui = swept
    (recorded,) = project.sql("select log_path from attempts where job_id = 1")
    with open(recorded["log_path"]) as f:
        text = f.read()
    assert EVIL in text
    code, piece = ui.get("/api/jobs/1/log")
    assert code == 200 and piece["text"] == text and piece["next_offset"] == len(text.encode())
    # A path in the request is never read: it is not a parameter at all.
    assert ui.get("/api/jobs/1/log?path=/etc/passwd&file=/etc/passwd")[1]["text"] == text
    assert ui.get(f"/api/jobs/1/log?attempt=1&offset={len(text.encode()) - 4}")[1]["text"] == text[-4:]
    assert ui.get("/api/jobs/1/log?attempt=2")[0] == 404
    assert ui.get("/api/jobs/999/log")[0] == 404
    for bad in ("attempt=../../etc/passwd", "offset=/etc/passwd", "offset=-1"):
        assert ui.get(f"/api/jobs/1/log?{bad}")[0] == 400, bad
    for path in (
        "/static/../../../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc/passwd",
        "/api/jobs/1/log/../../../../etc/passwd",
    ):
        status_code, body = raw_get(ui.url, path)
        assert status_code in (403, 404) and "root:" not in body, path


def raw_get(url: str, path: str, host: str | None = None) -> tuple[int, str]:
    """GET `path` exactly as written (urllib would resolve the dots)."""
    address = url.split("//", 1)[1].rstrip("/")
    name, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    return response.status, response.read().decode(errors="replace")


class _Elements(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.scripts.append(data)


def test_values_holding_html_stay_data_in_the_pages(swept):
    """The pages hold the DB's values only in their boot JSON, which no value can close; the browser tests check
    what the scripts make of them."""
    _, _, ui = swept
    rid = run_id(ui)
    for path, where in (
        ("/", lambda boot: boot["runs"][0]["name"]),
        (f"/runs/{rid}", lambda boot: boot["run"]["name"]),
        ("/jobs/1", lambda boot: boot["job"]["params"]["note"]),
    ):
        code, page = ui.fetch(path)
        assert code == 200
        parsed = _Elements()
        parsed.feed(page)
        assert "img" not in parsed.tags, path
        assert page.count("</script>") == page.count("<script"), path
        (boot_json,) = parsed.scripts
        assert EVIL in where(json.loads(boot_json)), path
        assert "<img" not in boot_json and "</script>" not in boot_json
    code, answer = ui.get("/api/runs")
    assert answer[0]["name"] == RUN  # the JSON endpoints give the values as they are


def test_pages_and_api_answer_only_to_this_machines_names(swept):
    _, _, ui = swept
    assert raw_get(ui.url, "/api/runs", host="evil.example:8080")[0] == 403
    assert raw_get(ui.url, "/", host="rebind.attacker.example")[0] == 403
    for name in ("localhost:9000", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST"):  # ssh -L may use any local port
        assert raw_get(ui.url, "/api/runs", host=name)[0] == 200, name


def test_a_port_in_use_is_one_error_line_and_exit_2(sqlite_project):
    sqlite_project.jq("enqueue", sqlite_project.sweep("one", "true", 1), check=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(sqlite_project.jq("ui", "--port", str(port), timeout=60), "already in use")
    assert f"--port {port}" in line
    refused(sqlite_project.jq("ui", "--db", "missing.db"), "no such database")


def test_another_host_than_loopback_is_served_with_a_one_line_warning(sqlite_project):
    sqlite_project.jq("enqueue", sqlite_project.sweep("one", "true", 1), check=True)
    ui = start_ui(sqlite_project, "--host", "0.0.0.0")
    try:
        assert ui.url.startswith("http://127.0.0.1:")
        assert ui.get("/api/runs")[0] == 200
        assert raw_get(ui.url, "/api/runs", host="cluster-login-1:8080")[0] == 200  # any name, as asked
    finally:
        err = ui.stop()
    (line,) = err.splitlines()
    assert line.startswith("jq: warning: --host 0.0.0.0: anyone who can reach this machine")


def loaded_modules(cwd, env: dict, *args: str) -> list[str]:
    """The modules of bottle and jobqueue.ui that `jq ARGS` loaded (its exit code does not matter)."""
    code = (
        "import json, sys; from jobqueue.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'bottle' or m.startswith('jobqueue.ui'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_only_jq_ui_loads_bottle(sqlite_project):
    p = sqlite_project
    p.jq("launch", p.sweep("one", "true", 2), "--no-progress", check=True)
    for args in (
        ["status"],
        ["status", "--json"],
        ["list"],
        ["logs", "1"],
        ["sql", "select 1"],
        ["enqueue", "one", "--dry-run"],
        ["results", "one"],
        ["worker"],
        ["--help"],
    ):
        assert loaded_modules(p.path, p.env(), *args) == [], args
    with socket.socket() as taken:  # jq ui itself does load it (and stops there: the port is taken)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "bottle" in loaded_modules(p.path, p.env(), "ui", "--port", str(taken.getsockname()[1]))


def test_reads_are_read_only_and_never_hold_a_worker_up(project):
    """A snapshot stays open while a worker runs a job to its end: the worker is not held up, the snapshot keeps
    seeing the DB as it was, and a write through it is refused."""
    from jobqueue.ui.readonly import ReadOnlyDB

    gate = project.path / "go"
    project.jq("enqueue", project.sweep("gated", f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done'", 1), check=True)
    db = ReadOnlyDB(project.db)
    try:
        with db.snapshot() as snap:
            assert snap.rows("SELECT state FROM jobs") == [("queued",)]
            with pytest.raises(Exception, match="(?i)read.?only|readonly"):
                snap.rows("UPDATE jobs SET state = 'cancelled'")
        with db.snapshot() as snap:
            assert snap.rows("SELECT state FROM jobs") == [("queued",)]
            worker = project.start("worker")
            gate.touch()
            worker.wait(timeout=60)
            assert worker.returncode == 0, worker.stderr.read()
            assert snap.rows("SELECT state FROM jobs") == [("queued",)]  # its snapshot, taken before
        with db.snapshot() as snap:
            assert snap.rows("SELECT state FROM jobs") == [("succeeded",)]
    finally:
        db.close()
    assert project.states() == {"succeeded": 1}


def test_counts_follow_the_attempts_between_full_counts(project):
    """With no full count after the first, the counts move with the attempts alone: while a worker runs a run
    (one job fails) they always add up, and at the end they are jq status's. A retry, which no attempt records,
    shows at the next full count."""
    from jobqueue.ui.counts import LiveCounts
    from jobqueue.ui.readonly import ReadOnlyDB

    project.write("work.py", "import sys, time\ntime.sleep(0.1)\nsys.exit(1 if '--i=4' in sys.argv else 0)\n")
    project.jq("enqueue", project.sweep("counted", "python work.py", 12), check=True)
    db = ReadOnlyDB(project.db)
    try:
        counts = LiveCounts(db, recount_share=float("inf"))
        run_id = next(iter(counts.current()))
        assert counts.of_run(run_id)["queued"] == 12
        worker = project.start("worker", "--slots", "3")
        seen = []
        while worker.poll() is None:
            now = counts.of_run(run_id)
            assert sum(now.values()) == 12 and min(now.values()) >= 0, now
            seen.append(now["running"])
            time.sleep(0.05)
        time.sleep(0.3)  # past FRESH_FOR
        assert counts.of_run(run_id) == status(project)["counts"]
        assert counts.of_run(run_id)["failed"] == 1 and max(seen) > 0
        assert counts.full_counts == 1
        project.jq("retry", "counted", check=True)
        time.sleep(0.3)
        assert counts.of_run(run_id)["failed"] == 1  # not yet seen
        counts.recount_share = 0
        expected = status(project)["counts"]
        project.wait_for(lambda: counts.of_run(run_id) == expected, timeout=10, what="a full count")
        assert expected["queued"] == 1 and counts.full_counts > 1
    finally:
        db.close()


def test_pages_of_a_big_run_walk_its_own_jobs_only(sqlite_project):
    """Runs enqueued in turns (a, then b, then a grown) interleave their ids: each page is the run's own jobs,
    in order, whatever the page size, direction or state."""
    p = sqlite_project
    p.jq("enqueue", p.sweep("a", "true", 60), check=True)
    p.jq("enqueue", p.sweep("b", "true", 10), check=True)
    p.jq("enqueue", p.sweep("a", "true", 80), check=True)
    p.jq("cancel", *[str(i) for i in range(1, 91, 3)], check=True)
    ui = start_ui(p)
    try:
        runs = {r["name"]: r for r in ui.get("/api/runs")[1]}
        ids = sorted(j["id"] for j in p.jobs("a"))
        assert len(ids) == 80 and ids[-1] > max(j["id"] for j in p.jobs("b"))
        for limit, order, state in (
            (25, "asc", ""),
            (50, "desc", ""),
            (25, "asc", "cancelled"),
            (25, "desc", "queued"),
        ):
            expected = [j["id"] for j in p.jobs("a") if not state or j["state"] == state]
            expected = sorted(expected, reverse=order == "desc")
            got, offset = [], 0
            while True:
                page = ui.get(
                    f"/api/runs/{runs['a']['id']}/jobs?limit={limit}&order={order}&state={state}&offset={offset}"
                )[1]
                assert page["total"] == len(expected)
                if not page["jobs"]:
                    break
                got += [j["id"] for j in page["jobs"]]
                offset += limit
            assert got == expected, (limit, order, state)
    finally:
        ui.stop()


def test_a_poll_answers_while_another_request_is_slow(sqlite_project):
    """Each request runs in a thread of its own: a client that opens a connection and sends nothing does not keep
    the next poll waiting."""
    p = sqlite_project
    p.jq("enqueue", p.sweep("one", "true", 1), check=True)
    ui = start_ui(p)
    try:
        address = ui.url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        with socket.create_connection((address[0], int(address[1]))) as idle:
            idle.sendall(b"GET /api/runs HTTP/1.1\r\n")  # and never the rest
            answered = []
            thread = threading.Thread(target=lambda: answered.append(ui.get("/api/runs")[0]))
            thread.start()
            thread.join(timeout=10)
            assert answered == [200]
    finally:
        ui.stop()
