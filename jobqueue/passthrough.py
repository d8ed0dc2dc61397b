"""`jq` shares its name with the JSON processor: arguments that are not jobqueue's go to the next `jq` on PATH.

This module is the console scripts' entry point. It decides from argv alone, before typer or the sweep API is
imported, so `jq .a` costs little more than the JSON jq itself.
"""

from __future__ import annotations

import _signal  # `signal` without the enum module it imports, a few ms of this start-up
import os
import stat
import sys

# What `jq WORD` may start with to be jobqueue's; tests/test_shell.py checks them against the typer app.
COMMANDS = frozenset("enqueue status list logs sql results metrics worker launch resume cancel retry ui db".split())
GLOBAL_OPTIONS = frozenset({"-h", "--help", "--install-completion", "--show-completion"})

# Only the name that collides hands over: the `jobqueue` alias and `python -m jobqueue` are always ours.
SHARED_NAME = "jq"


def is_jobqueue_argv(argv: list[str]) -> bool:
    """No arguments (jobqueue's help), a jobqueue command, or one of its global options."""
    return not argv or argv[0] in COMMANDS or argv[0].partition("=")[0] in GLOBAL_OPTIONS


def other_jq(search_path: str | None = None) -> str | None:
    """The first `jq` on PATH that is not a jobqueue entry point: not this script, a symlink to it, or another
    install's (two of which would otherwise hand over to each other for ever)."""
    this = _file_id(sys.argv[0])
    for directory in (os.environ.get("PATH", os.defpath) if search_path is None else search_path).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, SHARED_NAME)
        found = _file_id(candidate)
        if found is None or found == this or not os.access(candidate, os.X_OK) or _is_jobqueue_script(candidate):
            continue
        return candidate
    return None


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to this script is this script
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _is_jobqueue_script(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"jobqueue" in head


def hand_over(argv: list[str]) -> None:
    """Become the JSON jq with these arguments (stdin, stdout and the exit code are then its own); returns only
    when there is none."""
    target = other_jq()
    if target is None:
        return
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: `jq . | head` would
    # then see EPIPE errors instead of ending quietly as the JSON jq does.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    os.execv(target, [SHARED_NAME, *argv])


def main() -> None:
    argv = sys.argv[1:]
    if os.path.basename(sys.argv[0]) == SHARED_NAME and not is_jobqueue_argv(argv):
        hand_over(argv)
        print(
            f"jq: error: no such command: {argv[0]!r} (and no other jq, the JSON processor, on PATH to hand it to);"
            " see `jq --help`",
            file=sys.stderr,
        )
        sys.exit(2)
    from jobqueue.cli import main as jobqueue_main

    jobqueue_main()
