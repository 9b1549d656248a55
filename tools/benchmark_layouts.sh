#!/usr/bin/env bash
# One model on several TP x PP x DP layouts of the GPUs of one host, same seed, data and global
# batch: per-step losses, tokens/s, TFLOP/s per GPU, peak memory per GPU, and tools/plan.py's
# estimate for each layout. Results under $OUT (default /tmp/layouts).
#   bash tools/benchmark_layouts.sh 1x1x4 2x1x2 1x2x2 2x2x1        # TPxPPxDP
# Environment: PRESET (1.3b), GBS (32), STEPS (10 timed), WARMUP (10), GPU (H100-80GB for plan.py)
set -u
OUT=${OUT:-/tmp/layouts}
mkdir -p "$OUT"
PRESET=${PRESET:-1.3b}; GBS=${GBS:-32}; STEPS=${STEPS:-10}; WARMUP=${WARMUP:-10}
GPU=${GPU:-H100-80GB}
declare -A SHAPE=([124m]="12 768 12 1024" [350m]="24 1024 16 2048" [1.3b]="24 2048 16 2048")
read -r L H A S <<< "${SHAPE[$PRESET]}"
for layout in "$@"; do
  IFS=x read -r tp pp dp <<< "$layout"
  n=$((tp * pp * dp))
  flags=(--tensor-model-parallel-size "$tp" --pipeline-model-parallel-size "$pp"
         --global-batch-size "$GBS" --make-vocab-size-divisible-by 64)
  timeout 300 torchrun --standalone --nproc-per-node "$n" tools/benchmark.py --preset "$PRESET" \
    --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/$layout.json" -- "${flags[@]}" \
    > "$OUT/$layout.log" 2>&1
  echo "$layout rc=$?"
  grep BENCHMARK "$OUT/$layout.log" | cut -c1-700 || grep -v warn "$OUT/$layout.log" | tail -15
  python3 tools/plan.py --num-layers "$L" --hidden-size "$H" --num-attention-heads "$A" \
    --seq-length "$S" --micro-batch-size 8 --vocab-size 50304 --world-size "$n" --gpu "$GPU" \
    --bf16 --deepspeed_config ds_configs/zero1_bf16.json --train-iters 20 "${flags[@]}" \
    2>/dev/null | grep -E "^ +[0-9]+ |peak memory" > "$OUT/$layout.plan"
  cat "$OUT/$layout.plan"
done
