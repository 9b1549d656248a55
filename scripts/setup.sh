#!/usr/bin/env bash
# Create ./.venv and install the project with its test extras from the package index.
# TORCH_SPEC picks the torch build (default torch==2.13.0; on a GPU cluster pass the build you use,
# e.g. TORCH_SPEC="torch==2.5.1"). DeepSpeed's ops are JIT-built on first use (DS_BUILD_OPS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
DS_BUILD_OPS=0 python -m pip install -q -e ".[test]"
python -c "import torch, deepspeed, megatron.core; print('setup ok: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| megatron-core', megatron.core.__version__)"
