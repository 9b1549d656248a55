#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included: --run-slow; plain pytest
# deselects them). Extra args go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the
# quick subset (an explicit -m takes precedence over --run-slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
exec python -m pytest --run-slow "$@"
