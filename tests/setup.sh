#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine, as root: the Slurm and PostgreSQL
# servers the tests start themselves, and a venv with jobqueue (editable) and the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge postgresql util-linux jq chromium chromium-driver >/dev/null
else
  echo "tests/setup.sh: not root, so not installing slurm-wlm munge postgresql chromium (the tests that need them will skip)" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# ngcsdk 4.19.1 still ships NVIDIA's `ngc batch` parser, which checks our NGC command lines offline.
.venv/bin/pip install -q -e ".[test]" hatchling "ngcsdk==4.19.1" argcomplete
# Sample Factory, for tests/test_sample_factory.py, in a venv of its own that keeps the main one light. torch==2.13.0
# first: that CPU build lies on this machine's disk, where a plain `torch` (as SF requires it) pulls a CUDA build of
# several GB. jobqueue is editable here too, so `.venv-sf/bin/python -m jobqueue` runs jobs under this interpreter.
python3 -m venv .venv-sf
.venv-sf/bin/pip install -q torch==2.13.0
.venv-sf/bin/pip install -q sample-factory==2.1.1 gymnasium -e .
