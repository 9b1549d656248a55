"""Optimizer, training, checkpointing and logging flags (Megatron-DeepSpeed / Megatron-LM
names); megatron/config/cli.py builds the parser from them."""


def add_optimizer_flags(o) -> None:
    """Flags of OptimizerConfig."""
    o.add("--optimizer", default="adam", choices=["adam"], help="Optimizer (AdamW, decoupled).")
    o.add("--lr", type=float, default=3e-4, help="Peak learning rate.")
    o.add("--min-lr", type=float, default=0.0, help="Learning rate at the end of decay.")
    o.add("--weight-decay", type=float, default=0.01,
          help="Decoupled weight decay (not applied to biases and norms).")
    o.add("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    o.add("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    o.add("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    o.add("--clip-grad", type=float, default=1.0, help="Global gradient-norm clip (0: off).")


def add_training_flags(t) -> None:
    """Flags of TrainingConfig."""
    t.add("--micro-batch-size", type=int, default=1, help="Samples per rank per micro-step.")
    t.add("--global-batch-size", type=int, default=None,
          help="Samples per optimizer step (default micro-batch x data-parallel size).")
    t.add("--rampup-batch-size", nargs=3, type=int, default=None,
          metavar=("START", "INCREMENT", "SAMPLES"), help="Batch-size warmup.")
    t.add("--train-iters", type=int, default=None, help="Optimizer steps to train for.")
    t.add("--train-samples", type=int, default=None, help="Samples to train for.")
    t.add("--lr-decay-style", default="cosine",
          choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
          help="Learning-rate decay after warmup (WSD: warmup-stable-decay).")
    t.add("--lr-warmup-iters", type=int, default=0, help="Warmup in steps.")
    t.add("--lr-warmup-samples", type=int, default=0, help="Warmup in samples.")
    t.add("--lr-warmup-fraction", type=float, default=None,
          help="Warmup as a fraction of the decay period.")
    t.add("--lr-decay-iters", type=int, default=None, help="Decay period in steps.")
    t.add("--lr-decay-samples", type=int, default=None, help="Decay period in samples.")
    t.add("--lr-decay-tokens", type=int, default=None, help="Decay period in tokens.")
    t.add("--lr-warmup-tokens", type=int, default=None, help="Warmup in tokens.")
    t.add("--lr-wsd-decay-samples", type=int, default=None,
          help="WSD: samples of the final decay (the LR is constant before it).")
    t.add("--lr-wsd-decay-iters", type=int, default=None, help="WSD: the same in steps.")
    t.add("--lr-wsd-decay-style", default="exponential",
          choices=["exponential", "linear", "cosine", "minus_sqrt"],
          help="WSD: shape of the final decay.")
    t.add("--seed", type=int, default=1234, help="Seed of init, dropout and data order.")
    t.add("--bf16", action="store_true", help="bf16 weights/activations, fp32 master weights.")
    t.add("--fp16", action="store_true", help="fp16 with dynamic loss scaling.")
    t.add("--checkpoint-activations", action="store_true",
          help="Recompute each layer's activations in backward (saves memory).")
    t.add("--recompute-granularity", default=None, choices=["full", "selective"],
          help="Activation recomputation: full = --checkpoint-activations (each layer); "
               "selective = only the attention core (scores, softmax, dropout).")
    t.add("--torch-compile", action="store_true",
          help="torch.compile each transformer layer (regional compilation; about 30 s at "
               "start-up): +13%% tokens/s and less memory for a 1.3B model on one GPU "
               "(docs/benchmarks.md). At TP > 1 megatron-core's linear layers split the graphs.")
    t.add("--manual-gc", action="store_true",
          help="Switch Python's automatic garbage collector off while training and collect "
               "at set points instead (--manual-gc-interval, evaluations), so no step pays "
               "for a collection of the oldest generation at a random time (and no rank holds "
               "up the others for it).")
    t.add("--manual-gc-interval", type=int, default=0,
          help="With --manual-gc: collect every this many steps; 0 never between steps.")
    t.add("--no-manual-gc-eval", action="store_false", dest="manual_gc_eval",
          help="With --manual-gc: do not collect before and after each evaluation.")
    t.add("--enable-cuda-graph", action="store_true",
          help="Capture each transformer layer's forward and backward as CUDA graphs at the "
               "first step and replay them (megatron/model/cuda_graphs.py): the host launches "
               "a layer in one call, which helps where it cannot keep up with the GPU (124M "
               "preset on a slow host +34%%, on a fast one +2%%, at DP 2 +12%%; none at "
               "350M and 1.3B; docs/benchmarks.md). TP and PP 1; --bf16 with our optimizer "
               "(--bf16-optimizer local, or auto at DP 1) or fp32 at --zero-stage 0 on one "
               "GPU; no dropout, no activation recomputation.")
    t.add("--eval-interval", type=int, default=1000, help="Steps between validations.")
    t.add("--eval-iters", type=int, default=10, help="Batches per validation.")
    t.add("--eval-harness-tasks", default=None,
          help="lm-evaluation-harness tasks (comma-separated) to run on the model being "
               "trained, logged and written to TensorBoard (PP 1). Other data-parallel "
               "replicas wait meanwhile: keep --distributed-timeout-minutes above a run's "
               "duration.")
    t.add("--eval-harness-interval", type=int, default=None,
          help="Steps between --eval-harness-tasks runs (default: --eval-interval); also run "
               "at the end of training.")
    t.add("--eval-harness-include-path", default=None,
          help="Directory of local lm-eval task YAMLs for --eval-harness-tasks.")
    t.add("--eval-harness-limit", type=float, default=None,
          help="Documents per task (an int, or a fraction of the task) for each run.")
    t.add("--eval-harness-num-fewshot", type=int, default=None, help="Few-shot examples.")
    t.add("--eval-harness-batch-size", type=int, default=8, help="Requests per forward.")
    t.add("--exit-interval", type=int, default=None, help="Stop after this step (saving).")
    t.add("--exit-duration-in-mins", type=float, default=None,
          help="Save and stop after this many minutes of training (above one rank, every "
               "rank stops at the step after the one where the first rank passed it).")
    t.add("--skip-train-iteration-range", nargs="+", default=None, metavar="START-END",
          help="Iterations to skip (their batches are consumed, no update), e.g. 1000-1100; "
               "how to step over a loss spike after a restart.")
    t.add("--loss-spike-threshold", type=float, default=None,
          help="Flag a step whose loss exceeds the running mean by this many standard "
               "deviations (off by default).")
    t.add("--loss-spike-window", type=int, default=100,
          help="Steps in the running mean/std of the spike detector.")
    t.add("--loss-spike-action", default="log", choices=["log", "skip", "stop"],
          help="On a spike: log it; skip the batch (checked on the global batch's loss before "
               "the update, which is dropped; PP 1); or stop without saving (restart from the "
               "last checkpoint with --skip-train-iteration-range; the exit code is 3).")
    t.add("--kill-switch-path", default=None,
          help="If this file appears, save a checkpoint and exit (checked every step; above "
               "one rank, as signals, the ranks act on it one step later).")
    t.add("--deepspeed", action="store_true", default=True,
          help="Use DeepSpeed (always on: the one engine; accepted for compatibility).")
    t.add("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
          help="DeepSpeed JSON (ZeRO, optimizer dtype settings); batch sizes must match flags.")
    t.add("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3],
          help="ZeRO stage (overrides the DeepSpeed config's).")
    t.add("--bf16-optimizer", default="auto", choices=["auto", "deepspeed", "local"],
          help="bf16 master-weight optimizer: 'deepspeed' (BF16_Optimizer / ZeRO, sharded over "
               "DP), 'local' (fp32 masters and Adam moments on every rank, fused, no host sync "
               "in its step, gradients all-reduced during the backward in the JSON's "
               "communication_data_type, bf16 by default; PP 1), 'auto': local where nothing "
               "would be sharded (DP 1, PP 1).")
    t.add("--deepspeed-activation-checkpointing", action="store_true", no_effect=True,
          help="Accepted for compatibility: --checkpoint-activations recomputes each layer "
               "(same results as DeepSpeed's checkpointing); no effect on its own.")
    t.add("--partition-activations", action="store_true",
          help="Shard checkpointed activations over TP ranks (DeepSpeed). Not implemented yet: "
               "refused at start-up.")
    t.add("--universal-checkpoint", action="store_true",
          help="--load is a layout-independent checkpoint (tools/checkpoint_to_universal.py): "
               "resume with its weights, fp32 master weights and Adam moments at this run's "
               "TP/PP/DP sizes.")
    t.add("--abort-on-unmet-fused-kernel-constraints", action="store_true", no_effect=True,
          help="Accepted for compatibility; no effect (there is no fused-softmax fallback "
               "path here: attention kernels are chosen by --attention-kernel).")
    t.add("--dry-run", action="store_true",
          help="Build config, topology and each pipeline stage's partition without weights, "
               "print the memory/throughput plan (tools/plan.py) and exit.")
    t.add("--dry-run-world-size", type=int, default=None,
          help="GPUs for --dry-run (default: the launcher's world size, or TP x PP).")
    t.add("--dry-run-gpu", default="H100-80GB",
          help="GPU type for --dry-run's plan (see tools/plan.py --help).")


def add_checkpoint_flags(c) -> None:
    """Flags of CheckpointConfig."""
    c.add("--save", default=None, help="Directory to save checkpoints in.")
    c.add("--load", default=None, help="Directory to resume from.")
    c.add("--save-interval", type=int, default=None, help="Steps between checkpoints.")
    c.add("--no-load-optim", action="store_true", help="Do not load optimizer state.")
    c.add("--no-load-rng", action="store_true", help="Do not load RNG state.")


def add_logging_flags(lg) -> None:
    """Flags of LoggingConfig."""
    lg.add("--log-interval", type=int, default=100, help="Steps between log lines.")
    lg.add("--tensorboard-dir", default=None, help="Write TensorBoard events here.")
    lg.add("--log-params-norm", action="store_true",
           help="Also log the L2 norm of all parameters (costs one pass over them).")
    lg.add("--log-per-layer-grad-norm", action="store_true",
           help="Each --log-interval, the gradient norm of every block (embedding, each layer, "
                "head) to TensorBoard, the largest in the log line (PP 1).")
    lg.add("--log-level", default=None, no_effect=True,
           choices=["debug", "info", "warning", "error", "critical", "passive"],
           help="Accepted for compatibility (Megatron-DeepSpeed's logger verbosity); no effect "
                "on training.")
    lg.add("--log-level-replica", default=None, no_effect=True,
           choices=["debug", "info", "warning", "error", "critical", "passive"],
           help="Accepted for compatibility (verbosity of non-zero ranks); no effect on "
                "training.")
    lg.add("--tensorboard-queue-size", type=int, default=None, no_effect=True,
           help="Accepted for compatibility (TensorBoard writer queue); no effect on training.")
    lg.add("--log-timers-to-tensorboard", action="store_true",
           help="Split each logged step's time into data, forward, backward and optimizer "
                "(pipeline: one 'pipeline step') in the log line and TensorBoard; on GPUs each "
                "phase synchronises, so steps get slightly slower.")
    lg.add("--profile", action="store_true",
           help="Profile steps --profile-step-start+1 .. --profile-step-end: with "
                "--use-pytorch-profiler, torch.profiler writes a trace and an operator table "
                "to --profile-dir; without, the window is marked for `nsys profile "
                "--capture-range=cudaProfilerApi`.")
    lg.add("--use-pytorch-profiler", action="store_true",
           help="With --profile: use torch.profiler (trace_rank{R}.json, ops_rank{R}.txt).")
    lg.add("--profile-step-start", type=int, default=10,
           help="Steps completed before the profiled window starts.")
    lg.add("--profile-step-end", type=int, default=12,
           help="Steps completed when the profiled window ends.")
    lg.add("--profile-ranks", type=int, nargs="+", default=[0],
           help="Global ranks to profile.")
    lg.add("--profile-dir", default=None,
           help="Where --use-pytorch-profiler writes (default: --tensorboard-dir, else ./profile).")
    lg.add("--log-batch-size-to-tensorboard", action="store_true", no_effect=True,
           help="Accepted for compatibility; the global batch size is always logged.")
    lg.add("--log-validation-ppl-to-tensorboard", action="store_true", no_effect=True,
           help="Accepted for compatibility; validation perplexity is always logged.")
    lg.add("--codecarbon-dir", default=None, no_effect=True,
           help="Accepted for compatibility (emissions tracking); no effect, nothing written.")
