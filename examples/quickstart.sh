#!/usr/bin/env bash
# The quickstart pipeline, step by step (scripts/quickstart.sh sets up .venv and calls this).
# Usage: bash examples/quickstart.sh [RUN_DIR]   (default runs/quickstart)
# Environment: QUICKSTART_ITERS (default 600) and NPROC (processes, default 1; DP over gloo/NCCL).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}
ITERS=${QUICKSTART_ITERS:-600}
NPROC=${NPROC:-1}
mkdir -p "$RUN/data"

echo "== 1/5 corpus: docstrings of the Python standard library (every 20th module held out)"
python tools/build_stdlib_corpus.py --output "$RUN/data/stdlib.jsonl" --max-mb 6 \
  --heldout-output "$RUN/data/heldout.jsonl" --heldout-every 20

echo "== 2/5 tokenizer: SentencePiece BPE, 512 pieces"
if [ ! -f "$RUN/data/spm.model" ]; then
  python tools/train_tokenizer.py --input "$RUN/data/stdlib.jsonl" --json-keys text \
    --vocab-size 512 --model-type bpe --output-prefix "$RUN/data/spm"
fi

echo "== 3/5 indexed dataset (.bin/.idx)"
if [ ! -f "$RUN/data/stdlib_text_document.idx" ]; then
  python tools/preprocess_data.py --input "$RUN/data/stdlib.jsonl" --json-keys text \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$RUN/data/spm.model" \
    --append-eod --workers 2 --output-prefix "$RUN/data/stdlib"
fi

echo "== 4/5 train a tiny GPT ($ITERS steps), then validation/test loss and perplexity"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
torchrun --standalone --nproc-per-node "$NPROC" pretrain_gpt.py \
  --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128 \
  --max-position-embeddings 128 \
  --micro-batch-size $((16 / NPROC)) --global-batch-size 16 \
  --train-iters "$ITERS" --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 30 \
  --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 \
  --data-path "$RUN/data/stdlib_text_document" --split 949,50,1 \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$RUN/data/spm.model" \
  --deepspeed --deepspeed_config ds_configs/zero1.json \
  --log-interval 50 --eval-interval 200 --eval-iters 10 \
  --save "$RUN/checkpoints" --save-interval "$ITERS" \
  --tensorboard-dir "$RUN/tensorboard" --seed 1234
echo "== 5/5 zero-shot evaluation with lm-evaluation-harness on the held-out docstrings"
python examples/stdlib_eval_tasks.py --heldout "$RUN/data/heldout.jsonl" \
  --output-dir "$RUN/eval_tasks"
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python tasks/eval_harness/evaluate.py \
  --load "$RUN/checkpoints" --tasks stdlib_heldout_ppl,stdlib_cloze --num-fewshot 0 \
  --include-path "$RUN/eval_tasks" --results-path "$RUN/eval_results.json"
python tools/plot_logs.py "$RUN/tensorboard" --output "$RUN/curves.png"
echo "== done: checkpoint in $RUN/checkpoints, TensorBoard logs in $RUN/tensorboard,"
echo "   curves in $RUN/curves.png, lm-eval results in $RUN/eval_results.json"
