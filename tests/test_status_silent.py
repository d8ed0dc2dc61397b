"""`jq status` marks running jobs whose worker has gone silent (a real worker stopped with SIGSTOP)."""

import json
import signal
import time

from jobqueue.report import SILENT_AFTER_SECONDS


def silent_of(project) -> dict:
    (run,) = json.loads(project.jq("status", "--json", check=True).stdout)["runs"]
    return run["silent"]


def test_a_stopped_worker_s_running_job_is_marked_silent_until_it_heartbeats_again(project):
    project.sweep("long", "sh -c 'sleep 120' job", 2)
    project.jq("enqueue", "long", check=True)
    # The default --heartbeat, which is what `jq status` assumes; the default lease (60 s) outlasts the test,
    # so nobody reaps the stopped worker.
    workers = [project.start("worker", "--quiet") for _ in range(2)]
    try:
        project.wait_for(lambda: project.states() == {"running": 2}, what="both jobs running")
        assert silent_of(project) == {"jobs": 0, "workers": 0, "last_heartbeat_s": None}
        assert "silent" not in project.jq("status", check=True).stdout

        workers[0].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        silent = project.wait_for(
            lambda: silent_of(project)["jobs"] and silent_of(project), timeout=SILENT_AFTER_SECONDS + 20, what="mark"
        )
        # Its last heartbeat came at most one interval before the stop: never marked after a single missed beat.
        assert time.monotonic() - stopped >= SILENT_AFTER_SECONDS / 2
        assert silent["jobs"] == 1 and silent["workers"] == 1
        assert SILENT_AFTER_SECONDS <= silent["last_heartbeat_s"] < SILENT_AFTER_SECONDS + 15
        shown = project.jq("status", check=True).stdout
        assert "long: 2 running (1 with a silent worker: last heartbeat " in shown, shown
        assert "s ago — `jq resume` requeues it after the lease)" in shown, shown

        workers[0].send_signal(signal.SIGCONT)
        project.wait_for(lambda: silent_of(project)["jobs"] == 0, timeout=15, what="the mark to go")
        assert project.states() == {"running": 2}
    finally:
        for w in workers:
            w.send_signal(signal.SIGCONT)
            w.terminate()
        for w in workers:
            w.communicate(timeout=60)


def test_a_worker_is_silent_after_two_of_its_own_heartbeats_not_two_of_the_default(project):
    """A worker records its --heartbeat: one that beats every second is marked two seconds after it stops, long before
    two default intervals (10 s) would pass."""
    project.sweep("quick_beat", "sh -c 'sleep 120' job", 1)
    project.jq("enqueue", "quick_beat", check=True)
    worker = project.start("worker", "--quiet", "--heartbeat", "1")
    try:
        project.wait_for(lambda: project.states() == {"running": 1}, what="the job running")
        assert project.sql("select heartbeat_seconds from workers") == [{"heartbeat_seconds": 1.0}]
        time.sleep(1.5)  # a beat or two: the mark must not come from a worker that never beat
        assert silent_of(project)["jobs"] == 0
        worker.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        silent = project.wait_for(lambda: silent_of(project)["jobs"] and silent_of(project), timeout=20, what="mark")
        assert time.monotonic() - stopped < SILENT_AFTER_SECONDS - 3
        assert 2 <= silent["last_heartbeat_s"] < SILENT_AFTER_SECONDS - 2
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        worker.communicate(timeout=60)
