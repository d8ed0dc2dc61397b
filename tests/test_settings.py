"""Launch settings: one typed model, its merge order, Sample Factory's spellings, and what a run records."""

import json

import pytest

from jobqueue.errors import UserError
from jobqueue.settings import FLAGS, STORED_VERSION, LaunchSettings, Source, parse
from tests.conftest import REPO

SWEEP = Source("sweep", "experiments/x.py")
RECORDED = Source("recorded", "x")


def merged(sweep=None, recorded=None, flags=None) -> LaunchSettings:
    return LaunchSettings.merge(parse(sweep, SWEEP), parse(recorded, RECORDED), parse(flags, FLAGS))


def test_defaults_are_sample_factorys_but_for_the_pause():
    s = merged()
    assert (s.backend, s.num_gpus, s.experiments_per_gpu, s.max_parallel, s.pause_between) == (
        "processes",
        1,
        -1,
        4,
        0.0,
    )
    assert (s.slurm.gpus_per_job, s.slurm.cpus_per_gpu, s.slurm.timeout, s.slurm.workdir) == (1, 14, "0", "./slurm")
    assert s.grace is None and s.slurm.time_limit is None and s.ngc.workers is None


def test_each_level_overrides_the_one_below():
    assert merged(sweep={"max_parallel": 2}).max_parallel == 2
    assert merged(sweep={"max_parallel": 2}, recorded={"max_parallel": 3}).max_parallel == 3
    assert merged(sweep={"max_parallel": 2}, recorded={"max_parallel": 3}, flags={"max_parallel": 5}).max_parallel == 5
    # A level that says nothing of a setting leaves the one below in force.
    assert merged(sweep={"max_parallel": 2}, recorded={"num_gpus": 3}, flags={"backend": "slurm"}).max_parallel == 2


def test_sample_factory_1x_keywords_are_aliases():
    s = merged(sweep={"use_gpus": 2, "experiments_per_gpu": 1, "pause_between_experiments": 3})
    assert (s.num_gpus, s.gpu_list(), s.pause_between) == (2, ["0", "1"], 3.0)
    assert merged(sweep={"use_gpus": 2}, flags={"num_gpus": 4}).num_gpus == 4


def test_a_version_1_row_keeps_the_spelling_the_user_wrote_over_the_defaults_merged_beside_it():
    old = {"backend": "processes", "num_gpus": 1, "use_gpus": 2, "max_parallel": 2, "gpus": None, "timeout": None}
    assert merged(recorded=old).num_gpus == 2
    assert merged(recorded={"version": 2, "num_gpus": 1, "use_gpus": 2}).num_gpus == 2  # v2 never writes both


def test_stored_settings_round_trip_without_the_print_only_flags():
    s = merged(
        sweep={"use_gpus": 2},
        flags={
            "slurm_partition": "debug",
            "slurm_print_only": True,
            "ngc_print_only": True,
            "slurm_time_limit": "1:00:00",
            "grace": 5,
        },
    )
    stored = json.loads(json.dumps(s.to_stored()))
    assert stored["version"] == STORED_VERSION
    assert not any(k.endswith("print_only") for k in stored)
    again = merged(recorded=stored)
    assert again == LaunchSettings.merge(parse({k: v for k, v in stored.items()}, RECORDED))
    assert (again.num_gpus, again.slurm.partition, again.slurm.time_limit, again.grace) == (2, "debug", "1:00:00", 5.0)
    assert not again.slurm.print_only


def test_a_row_written_by_a_newer_jobqueue_is_read_without_its_unknown_keys():
    assert (
        merged(recorded={"version": 9, "max_parallel": 3, "some_future_knob": 1, "executes": "direct"}).max_parallel
        == 3
    )


@pytest.mark.parametrize(
    "source, raw, message",
    [
        (
            SWEEP,
            {"max_paralel": 2},
            "experiments/x.py: RunDescription(max_paralel=2): not a launch setting; did you mean max_parallel?",
        ),
        (
            SWEEP,
            {"colour": "red"},
            "experiments/x.py: RunDescription(colour='red'): not a launch setting; use one of backend, ",
        ),
        (
            SWEEP,
            {"max_parallel": 0},
            "experiments/x.py: RunDescription(max_parallel=0): expected a whole number of at least 1",
        ),
        (SWEEP, {"use_gpus": "two"}, "experiments/x.py: RunDescription(use_gpus='two'): expected a whole number"),
        (FLAGS, {"backend": "kubernetes"}, "--backend 'kubernetes': expected one of processes, slurm, ngc"),
        (FLAGS, {"slurm_mode": "array"}, "--slurm-mode 'array': expected one of workers, per-job"),
        (FLAGS, {"slurm_time_limit": "1h"}, "--slurm-time-limit '1h': expected a time in Slurm's format"),
        (FLAGS, {"gpus": "0,x"}, "--gpus '0,x': expected GPU indices like 0,2"),
        (FLAGS, {"pause_between": -1}, "--pause-between -1: expected a number of seconds, 0 or more"),
    ],
)
def test_a_bad_setting_is_one_line_naming_where_it_came_from(source, raw, message):
    with pytest.raises(UserError) as caught:
        parse(raw, source)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["0", "90", "30:00", "1:30:00", "2-00", "2-12:30", "2-00:00:00", "UNLIMITED"])
def test_slurm_time_limits_in_slurms_formats_are_accepted(value):
    assert merged(flags={"slurm_time_limit": value}).slurm.time_limit == value


def test_cpus_per_slurm_task_follow_the_gpus():
    assert merged(flags={"slurm_gpus_per_job": 2, "slurm_cpus_per_gpu": 8}).slurm.cpus_per_task == 16
    assert merged(flags={"slurm_gpus_per_job": 0, "slurm_cpus_per_gpu": 8}).slurm.cpus_per_task == 8


# A job that notes its GPU and when it ran: "gpu start end" in the ledger.
LEDGER_JOB = (
    """sh -c 's=$(date +%s.%N); sleep 0.6; echo "${CUDA_VISIBLE_DEVICES:-none} $s $(date +%s.%N)" >> ledger' job"""
)


def ledger(project) -> list[tuple[str, float, float]]:
    rows = [line.split() for line in (project.path / "ledger").read_text().splitlines()]
    return [(gpu, float(start), float(end)) for gpu, start, end in rows]


def most_at_once(spans) -> int:
    return max(sum(1 for _, s, e in spans if s <= start < e) for _, start, _ in spans)


def test_a_sample_factory_1x_sweep_runs_on_the_gpus_and_at_the_parallelism_its_run_description_asks(sqlite_project):
    """SF 1.x files set launch settings as RunDescription keywords (e.g. doom_bots_sweep.py's use_gpus=4,
    experiments_per_gpu=1, max_parallel=4); they take effect unless a flag overrides them."""
    p = sqlite_project
    p.sweep("ug", LEDGER_JOB, 6, use_gpus=2, experiments_per_gpu=1, max_parallel=2)
    proc = p.jq("launch", "ug", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    spans = ledger(p)
    assert sorted(gpu for gpu, _, _ in spans) == ["0", "0", "0", "1", "1", "1"]
    assert most_at_once(spans) == 2
    for gpu in ("0", "1"):
        assert most_at_once([span for span in spans if span[0] == gpu]) == 1

    # A flag given now wins over the sweep file's keyword.
    p.sweep("ug_flags", LEDGER_JOB, 3, use_gpus=2, experiments_per_gpu=1, max_parallel=2)
    (p.path / "ledger").unlink()
    assert (
        p.jq("launch", "ug_flags", "--experiments-per-gpu", "-1", "--max-parallel", "3", "--no-progress").returncode
        == 0
    )
    spans = ledger(p)
    assert {gpu for gpu, _, _ in spans} == {"none"} and most_at_once(spans) == 3


def test_a_bad_run_description_keyword_is_one_line_and_writes_nothing(sqlite_project):
    p = sqlite_project
    p.sweep("typo", "true", 2, max_paralel=2)
    proc = p.jq("launch", "typo", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert (
        proc.stderr
        == "jq: error: typo.py: RunDescription(max_paralel=2): not a launch setting; did you mean max_parallel?\n"
    )
    assert not (p.path / "jobqueue.db").exists()


def test_a_launchs_lease_reaches_every_backends_workers_and_is_recorded_for_resume():
    from jobqueue.backends import ngc, processes, slurm

    template = str(REPO / "workers" / "ngc_job.template")
    s = merged(flags={"lease": 120, "ngc_workers": 1, "ngc_job_template": template})
    assert merged(recorded=json.loads(json.dumps(s.to_stored()))).lease == 120.0
    assert processes.worker_settings(s, run_id=1).lease == 120.0
    argv = slurm.worker_argv("postgresql+psycopg://u@h/db", "r", s)
    assert argv[argv.index("--lease") + 1] == "120"
    ((_, words),) = ngc.plan_commands("postgresql+psycopg://u@h/db", {"name": "r"}, s, [])
    assert "--lease 120 " in " ".join(words)
    default = merged()
    assert default.lease is None and "--lease" not in slurm.worker_argv("x.db", "r", default)
    assert processes.worker_settings(default, run_id=1).lease == 60.0
