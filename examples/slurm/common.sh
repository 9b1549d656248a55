# Sourced by the sbatch files here, from the repository root (sbatch from there: they `cd
# $SLURM_SUBMIT_DIR`). Functions:
#   gpt3d_rendezvous     MASTER_ADDR = NodeAddr of the job's first node, MASTER_PORT from the job id
#   gpt3d_train ARGS...  runs pretrain_gpt.py ARGS on every allocated GPU and, if the trainer
#                        stopped on SIGUSR1/SIGTERM (saving first), requeues the job
# Environment knobs (all optional):
#   LAUNCHER=srun        one task per GPU (default; preemption signals reach every rank), or
#            torchrun    one torchrun per node (--ntasks-per-node=1), GPUS_PER_NODE workers each
#   PYTHON=python        interpreter (e.g. .venv/bin/python)
#   TRAIN_SCRIPT=pretrain_gpt.py
#   LOG_DIR=logs         per-run logs: $LOG_DIR/<job name>-<job id>-run<restart count>.log
#   MAX_REQUEUES=50      stop requeueing after this many restarts
#   REQUEUE_ON_EXIT=0    1: also requeue after --exit-duration-in-mins (BigScience's 20 h chunks)
#   GPT3D_PRINT_ARGS=1   print the training arguments (NUL-separated) instead of running
# NCCL (GPU clusters): NCCL_SOCKET_IFNAME / NCCL_IB_HCA name the fast interfaces if NCCL picks
# the wrong ones; NCCL_DEBUG=WARN (INFO to debug hangs); TORCH_NCCL_ASYNC_ERROR_HANDLING=1 turns a
# dead peer into an error instead of a hang; NCCL_NVLS_ENABLE=0 unless NVLink SHARP is set up.
set -o pipefail

export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}  # older torch's name
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export PYTHONUNBUFFERED=1

gpt3d_rendezvous() {
  local first addr
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # NodeAddr, not the name: names need not resolve (e.g. several slurmd on one test machine).
  addr=$(scontrol show node "$first" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
  export MASTER_ADDR=${MASTER_ADDR:-${addr:-$first}}
  export MASTER_PORT=${MASTER_PORT:-$((6000 + SLURM_JOB_ID % 20000))}
  echo "rendezvous $MASTER_ADDR:$MASTER_PORT; nodes $SLURM_JOB_NODELIST; restart ${SLURM_RESTART_COUNT:-0}"
}

# Launch; every rank's output goes to the job log and to $1 (the run log).
_gpt3d_launch() {
  local run_log=$1; shift
  local py=${PYTHON:-python} script=${TRAIN_SCRIPT:-pretrain_gpt.py}
  # --kill-on-bad-exit: one failing rank ends the step (no hang in a collective).
  local srun_args=(--kill-on-bad-exit=1 --wait=60)
  if [ "${LAUNCHER:-srun}" = torchrun ]; then
    # torchrun ignores SIGUSR1 (`trap ''`, inherited); its workers install the trainer's handler.
    srun "${srun_args[@]}" --ntasks-per-node=1 bash -c "trap '' USR1; exec $py -u -m \
      torch.distributed.run --nnodes $SLURM_NNODES --nproc-per-node ${GPUS_PER_NODE:-8} \
      --node-rank \$SLURM_NODEID --rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:$MASTER_PORT \
      --rdzv-id $SLURM_JOB_ID --max-restarts 0 $script ${*@Q}" 2>&1 | tee -a "$run_log"
  else
    srun "${srun_args[@]}" "$py" -u "$script" "$@" 2>&1 | tee -a "$run_log"
  fi
}

gpt3d_train() {
  if [ -n "${GPT3D_PRINT_ARGS:-}" ]; then printf '%s\0' "$@"; return 0; fi
  gpt3d_rendezvous
  mkdir -p "${LOG_DIR:-logs}"
  local run_log="${LOG_DIR:-logs}/${SLURM_JOB_NAME}-${SLURM_JOB_ID}-run${SLURM_RESTART_COUNT:-0}.log"
  local rc=0
  _gpt3d_launch "$run_log" "$@" || rc=$?
  echo "training step exited with $rc (log $run_log)"
  if [ "$rc" = 0 ] && gpt3d_stopped_for_requeue "$run_log"; then
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-50}" ]; then
      echo "not requeueing: already restarted ${SLURM_RESTART_COUNT} times (MAX_REQUEUES)"
    else
      echo "checkpoint saved after a stop request: requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID"
    fi
  fi
  return "$rc"
}

# True if the trainer saved and stopped on a signal (not the kill switch) or, with
# REQUEUE_ON_EXIT=1, on --exit-duration-in-mins.
gpt3d_stopped_for_requeue() {
  grep -Eq "^stopping at iteration [0-9]+: SIG" "$1" && return 0
  [ "${REQUEUE_ON_EXIT:-0}" = 1 ] && grep -Eq "^exiting at iteration [0-9]+ " "$1"
}
