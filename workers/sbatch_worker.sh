#!/bin/bash
# jobqueue worker for run $JQ_RUN: each task of the array runs one worker that claims jobs until the
# queue is drained. Template variables: $$CMD $$FILENAME $$PARTITION $$GPU $$CPU $$TIMEOUT $$JQ_DB $$JQ_RUN
# (write $$$$ for a literal $$); anything else with a $$, like $$HOME, is left for the shell.
#
# Activate your environment here if the submitting one is not inherited, e.g.:
#   source $HOME/venvs/research/bin/activate
#
# `exec` makes the worker the batch script itself, so Slurm's USR1 warning (--signal=B:USR1@...)
# and scancel's TERM reach it directly and it can hand its jobs back before the node goes away.
exec $CMD
