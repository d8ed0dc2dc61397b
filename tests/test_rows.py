"""A job's row: its argv is stored only when its cmd, split at its spaces, would not give it back; else JSON null."""

from __future__ import annotations

import json
import shlex

import pytest

from jobqueue import sql
from jobqueue.db import close_all, open_db

ARGS = """
import json, sys
print("ARGS", json.dumps(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "cmd", "stored"),
    [
        (
            ["python", "-m", "train", "--lr=0.1", "--name=00_j_lr_0.1"],
            "python -m train --lr=0.1 --name=00_j_lr_0.1",
            False,
        ),
        (["python", "--tag=ünïcode", "--x=a,b:c@d%e+f"], "python --tag=ünïcode --x=a,b:c@d%e+f", False),
        (["python", "--x=a b"], "python '--x=a b'", True),  # quoted: cmd is not its words joined
        (["python", "--x=a b"], "python --x=a b", True),  # a word with a space
        (["python", "--x='q'"], "python --x='q'", True),  # a shell would unquote it
        (["python", '--x="q"'], 'python --x="q"', True),  # and JSON would escape it
        (["python", "--x=a\\b"], "python --x=a\\b", True),
        (["python", "--x=a\tb"], "python --x=a\tb", True),
        (["python", "", "x"], "python  x", False),
        (["python", 3], "python 3", True),  # not a string
    ],
)
def test_argv_is_stored_only_when_the_cmd_does_not_give_it_back(argv, cmd, stored):
    assert sql.argv_is_cmd(argv, cmd) is not stored
    if not stored:
        assert sql.argv_of(None, cmd) == argv
        if "" not in argv:
            assert shlex.split(cmd) == argv  # and what a shell runs


def test_jobs_run_with_their_argv_whether_it_is_stored_or_not_and_a_re_enqueue_sees_no_change(project):
    project.write("args.py", ARGS)
    project.write(
        "words.py",
        """
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("words", experiments=[
            Experiment("j", "python args.py --fixed=1", ParamGrid([("v", [1, "a b", "it's"])]).generate_params()),
        ])
        """,
    )
    project.jq("enqueue", "words", check=True)
    stored = project.sql("select name, cast(argv as text) as argv from jobs order by id")
    assert [row["argv"] == "null" for row in stored] == [True, False, False]
    expected = [
        ["--fixed=1", "--v=1", "--experiment=00_j_v_1"],
        ["--fixed=1", "--v=a b", "--experiment=01_j_v_a b"],
        ["--fixed=1", "--v=it's", "--experiment=02_j_v_it's"],
    ]
    jobs = project.jobs()
    assert [job["argv"][2:-1] for job in jobs] == expected  # python args.py ... --train_dir=...
    project.jq("worker", "--quiet", check=True)
    for job, words in zip(project.jobs(), expected):
        log = project.jq("logs", str(job["id"]), check=True).stdout
        printed = json.loads(log.split("ARGS ", 1)[1].splitlines()[0])
        assert printed[:-1] == words, log
    again = project.jq("enqueue", "words", check=True).stdout
    assert "Nothing to add" in again and "different command" not in again

    # A job stored before has its argv whole: a re-enqueue still sees the same command.
    db = open_db(project.db)
    db.transact(
        lambda tx: tx.execute("UPDATE jobs SET argv = :argv WHERE id = 1", {"argv": json.dumps(jobs[0]["argv"])})
    )
    close_all()
    again = project.jq("enqueue", "words", check=True).stdout
    assert "Nothing to add" in again and "different command" not in again
    project.write("words.py", (project.path / "words.py").read_text().replace("--fixed=1", "--fixed=2"))
    changed = project.jq("enqueue", "words", check=True).stdout
    assert "3 jobs already queued under the same name now expand to a different command" in changed
