#!/usr/bin/env bash
# The main job on a small embedded default, with no arguments and no downloads:
# set up .venv, then build a corpus from the Python standard library's docstrings, train a
# SentencePiece tokenizer, write .bin/.idx files, train a tiny GPT through DeepSpeed (CPU + gloo,
# or the GPUs present), save a checkpoint, and report validation/test loss and perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec bash examples/quickstart.sh "${1:-runs/quickstart}"
