"""Command-line flags (Megatron-DeepSpeed / Megatron-LM names) -> `Config`.

Every flag maps to one field of one config group. Flags whose feature has not landed yet are
parsed (so existing sbatch argument lists are recognised) but rejected by `validate.py` with
"not implemented yet" when set: never silently ignored.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from typing import Optional, Sequence

from megatron.config.schema import Config

# dest -> config group; filled by _Flags.add
_GROUP_OF: dict[str, str] = {}
# dest -> flag, for flags accepted only so that Megatron-DeepSpeed argument lists parse: they
# change nothing here, and start-up warns about each one given (validate.no_effect_warning).
# Their defaults are None/False, so a value other than that means the user set it.
NO_EFFECT_FLAGS: dict[str, str] = {}

POSITION_EMBEDDING_ALIASES = {"absolute": "learned_absolute", "learned": "learned_absolute",
                              "rotary": "rope"}
TOKENIZER_TYPE_ALIASES = {"PretrainedFromHF": "HuggingFaceTokenizer"}  # Megatron-DeepSpeed's


class _Flags:
    """argparse group that records which config group each flag belongs to."""

    def __init__(self, parser: argparse.ArgumentParser, title: str, group: str):
        self._arg_group = parser.add_argument_group(title)
        self._group = group

    def add(self, *names, no_effect: bool = False, **kwargs):
        action = self._arg_group.add_argument(*names, **kwargs)
        _GROUP_OF[action.dest] = self._group
        if no_effect:
            assert action.default in (None, False), action.dest
            NO_EFFECT_FLAGS[action.dest] = action.option_strings[0]
        return action


class _SuggestingParser(argparse.ArgumentParser):
    """Rejects unknown flags, naming the closest known one."""

    def parse_args(self, args=None, namespace=None):
        ns, unknown = self.parse_known_args(args, namespace)
        if getattr(ns, "swiglu", False) and ns.glu_activation not in (None, "swiglu"):
            self.error(f"--swiglu contradicts --glu-activation {ns.glu_activation}: give one")
        flags = [u for u in unknown if u.startswith("-")]
        if unknown:
            known = [o for a in self._actions for o in a.option_strings]
            msgs = []
            for u in flags or unknown:
                name = u.split("=", 1)[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                msgs.append(f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close
                                                      else ""))
            self.error("; ".join(msgs))
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = _SuggestingParser(
        prog="pretrain_gpt.py",
        description="Pretrain a GPT with tensor, pipeline and data parallelism (DeepSpeed engine). "
                    "Flags keep Megatron-DeepSpeed's names.",
        allow_abbrev=False)

    m = _Flags(p, "model", "model")
    m.add("--num-layers", type=int, default=2, help="Number of transformer layers.")
    m.add("--hidden-size", type=int, default=64, help="Transformer hidden size.")
    m.add("--ffn-hidden-size", type=int, default=None,
          help="MLP hidden size after the activation (default 4 x hidden, also with "
               "--glu-activation, whose first projection then has 2 x this many outputs, as in "
               "Megatron-DeepSpeed; with --swiglu, Megatron-LM's int(4 x hidden x 2/3 / 64) x "
               "64).")
    m.add("--num-attention-heads", type=int, default=4, help="Number of attention heads.")
    m.add("--seq-length", type=int, default=128, help="Sequence length of training samples.")
    m.add("--max-position-embeddings", type=int, default=None,
          help="Positions the model supports (default: --seq-length).")
    m.add("--make-vocab-size-divisible-by", type=int, default=128,
          help="Pad the vocabulary to a multiple of this x tensor-parallel size.")
    m.add("--pad-vocab-size-to", type=int, default=None,
          help="Pad the vocabulary to exactly this size (BLOOM: 250880).")
    m.add("--position-embedding-type", default="learned_absolute",
          choices=["learned_absolute", "absolute", "learned", "sinusoidal", "rope", "rotary",
                   "alibi", "none"],
          help="Position embedding: learned_absolute (alias absolute), sinusoidal, rope (alias "
               "rotary), alibi or none.")
    m.add("--rotary-percent", type=float, default=1.0,
          help="Fraction of each head's dimensions that get rotary embedding.")
    m.add("--rotary-base", type=float, default=10000.0, help="Base period of rotary embedding.")
    m.add("--openai-gelu", action="store_const", const="gelu_tanh", dest="activation",
          default="gelu", help="Use the tanh approximation of GeLU (GPT-2's).")
    m.add("--glu-activation", default=None, choices=["geglu", "swiglu", "reglu", "liglu"],
          help="Gated linear unit MLP activation (Megatron-DeepSpeed's flag): the first "
               "projection outputs 2 x --ffn-hidden-size (gate and up; default FFN size 4 x "
               "hidden, as without GLU).")
    m.add("--swiglu", action="store_true",
          help="Megatron-LM's flag: --glu-activation swiglu, and without --ffn-hidden-size the "
               "FFN size is Megatron-LM's int(4 x hidden x 2/3 / 64) x 64 (about the parameters "
               "of a 4 x hidden GeLU MLP) instead of 4 x hidden.")
    m.add("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"],
          help="Normalisation layer (computed in fp32).")
    m.add("--layernorm-epsilon", type=float, default=1e-5, help="Epsilon of the norms.")
    m.add("--sandwich-layernorm", action="store_true",
          help="Also normalise each sub-layer's output before the residual add (sandwich-LN).")
    m.add("--embed-layernorm", action="store_true",
          help="LayerNorm after the word embedding (BLOOM's bf16 stabiliser).")
    m.add("--parallel-attention-mlp", action="store_true",
          help="Attention and MLP in parallel from one residual (GPT-J / GPT-NeoX).")
    m.add("--disable-bias-linear", action="store_false", dest="add_bias_linear",
          help="No biases in linear layers.")
    m.add("--untie-embeddings-and-output-weights", action="store_true",
          help="Separate output layer instead of reusing the input embedding.")
    m.add("--init-method-std", type=float, default=0.02, help="Std of the normal init.")
    m.add("--hidden-dropout", type=float, default=0.1, help="Dropout after attention and MLP.")
    m.add("--attention-dropout", type=float, default=0.1, help="Dropout on attention probs.")
    m.add("--attention-softmax-in-fp32", action="store_true",
          help="Compute attention softmax in fp32 under bf16/fp16.")
    m.add("--apply-query-key-layer-scaling", action="store_true",
          help="Scale query-key products by 1/layer-number (fp16 stability).")
    m.add("--attention-kernel", default="auto", choices=["auto", "eager", "sdpa", "flex"],
          help="Attention implementation; auto picks the fastest that supports the mask.")
    m.add("--sdpa-backend", default="auto", choices=["auto", "cudnn", "flash", "efficient", "math"],
          help="On GPUs, the torch SDPA kernel tried first where attention runs through SDPA "
               "(a kernel that cannot take the inputs falls through to the next); auto: "
               "torch's own order.")
    m.add("--prefix-lm", action="store_true",
          help="Prefix-LM: each sample is split at a random point (drawn from its tokens and "
               "--seed, the same on every rank and layout); positions before it attend "
               "bidirectionally. Combines with --reset-attention-mask.")

    par = _Flags(p, "parallelism", "parallel")
    par.add("--tensor-model-parallel-size", type=int, default=1, help="Tensor-parallel size.")
    par.add("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline stages.")
    par.add("--sequence-parallel", action="store_true",
            help="Shard norms/dropout activations along the sequence over TP ranks.")
    par.add("--pp-partition-method", default="type:transformer",
            help="How layers are split over pipeline stages: type:transformer (the default; "
                 "needs --num-layers divisible by the stages), 'type:transformer|embedding' "
                 "(the embedding and head count as layers: BLOOM-176B's 70 layers on 12 "
                 "stages), parameters, uniform or type:REGEX.")
    par.add("--distributed-backend", default="auto", choices=["auto", "nccl", "gloo"],
            help="torch.distributed backend (auto: nccl on GPUs, gloo on CPU).")
    par.add("--distributed-timeout-minutes", type=int, default=30,
            help="Timeout of collective operations.")
    par.add("--sync-tp-duplicated-parameters", action="store_true",
            help="Average the parameters every TP rank holds a copy of (norms, row-parallel "
                 "biases, position embeddings) across the TP group before each forward, so bf16 "
                 "rounding cannot make the copies drift apart (BLOOM-176B).")

    d = _Flags(p, "data", "data")
    d.add("--data-path", nargs="*", default=[],
          help="Dataset prefixes, optionally weighted: [w1] prefix1 [w2] prefix2 ...")
    d.add("--split", default="969,30,1", help="Train/valid/test split weights, e.g. 949,50,1.")
    d.add("--tokenizer-type", default=None,
          help="SentencePieceTokenizer, GPTSentencePieceTokenizer, HuggingFaceTokenizer, "
               "GPT2BPETokenizer, ByteLevelTokenizer or NullTokenizer (with --vocab-size).")
    d.add("--tokenizer-model", default=None, help="SentencePiece model file.")
    d.add("--tokenizer-name-or-path", default=None,
          help="Local HF tokenizer.json or directory.")
    d.add("--vocab-file", default=None, help="GPT-2 BPE vocab.json.")
    d.add("--merge-file", default=None, help="GPT-2 BPE merges.txt.")
    d.add("--vocab-size", type=int, default=None,
          help="NullTokenizer: ids are 0..N-1 (eod = N).")
    d.add("--data-cache-path", default=None,
          help="Directory for the dataset index caches (default: next to the data).")
    d.add("--reset-position-ids", action="store_true", help="Restart positions after EOD.")
    d.add("--reset-attention-mask", action="store_true",
          help="Attend only within the same document (mask across EOD).")
    d.add("--eod-mask-loss", action="store_true", help="No loss on EOD tokens.")
    d.add("--loss-on-targets-only", action="store_true",
          help="Prefix-LM: no loss on the prefix (only on the targets after the split); "
               "needs --prefix-lm.")
    d.add("--num-workers", type=int, default=0, help="Data-loader worker processes.")
    d.add("--valid-num-workers", type=int, default=None, no_effect=True,
          help="Accepted for compatibility; no effect on results (validation uses "
               "--num-workers).")
    d.add("--data-impl", default="mmap", choices=["mmap", "infer"],
          help="Indexed dataset implementation; only mmap (megatron-core's format) exists.")
    for split, many in (("train", "ONE group"), ("valid", "one or more groups, each "
                         "evaluated and logged on its own"), ("test", "one or more groups")):
        d.add(f"--{split}-weighted-split-paths", nargs="*", default=[],
              help=f"BigScience's per-split data ({many}), instead of --data-path/--split: "
                   f"'NAME: WEIGHT START:END PREFIX, WEIGHT START:END PREFIX ...'; each "
                   f"dataset contributes its documents in the fraction [START, END).")
        d.add(f"--{split}-weighted-split-paths-path", default=None,
              help=f"A file holding the --{split}-weighted-split-paths groups on one line, "
                   f"each in double quotes (what BigScience's load_ratios_meg_ds_format.py "
                   f"writes).")
    d.add("--mock-data", action="store_true", help="Random tokens instead of --data-path.")

    o = _Flags(p, "optimizer", "optimizer")
    o.add("--optimizer", default="adam", choices=["adam"], help="Optimizer (AdamW, decoupled).")
    o.add("--lr", type=float, default=3e-4, help="Peak learning rate.")
    o.add("--min-lr", type=float, default=0.0, help="Learning rate at the end of decay.")
    o.add("--weight-decay", type=float, default=0.01,
          help="Decoupled weight decay (not applied to biases and norms).")
    o.add("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    o.add("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    o.add("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    o.add("--clip-grad", type=float, default=1.0, help="Global gradient-norm clip (0: off).")

    t = _Flags(p, "training", "training")
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
          help="Save and stop after this many minutes of training.")
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
          help="If this file appears, save a checkpoint and exit (checked every step).")
    t.add("--deepspeed", action="store_true", default=True,
          help="Use DeepSpeed (always on: the one engine; accepted for compatibility).")
    t.add("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
          help="DeepSpeed JSON (ZeRO, optimizer dtype settings); batch sizes must match flags.")
    t.add("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3],
          help="ZeRO stage (overrides the DeepSpeed config's).")
    t.add("--bf16-optimizer", default="auto", choices=["auto", "deepspeed", "local"],
          help="bf16 master-weight optimizer: 'deepspeed' (BF16_Optimizer / ZeRO, sharded over "
               "DP), 'local' (fp32 masters and Adam moments on every rank, fused, no host sync; "
               "PP 1), 'auto': local where nothing would be sharded (DP 1, PP 1).")
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

    c = _Flags(p, "checkpointing", "checkpoint")
    c.add("--save", default=None, help="Directory to save checkpoints in.")
    c.add("--load", default=None, help="Directory to resume from.")
    c.add("--save-interval", type=int, default=None, help="Steps between checkpoints.")
    c.add("--no-load-optim", action="store_true", help="Do not load optimizer state.")
    c.add("--no-load-rng", action="store_true", help="Do not load RNG state.")

    lg = _Flags(p, "logging", "logging")
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
    return p


def megatron_lm_swiglu_ffn_size(hidden_size: int) -> int:
    """Megatron-LM's default FFN size for --swiglu (NVIDIA/Megatron-LM,
    megatron/training/arguments.py: `args.ffn_hidden_size = int((4 * args.hidden_size * 2 / 3)
    / 64) * 64`): 8/3 h rounded down to a multiple of 64."""
    return int((4 * hidden_size * 2 / 3) / 64) * 64


def config_from_args(ns: argparse.Namespace) -> Config:
    groups: dict[str, dict] = {}
    for dest, value in vars(ns).items():
        if dest not in _GROUP_OF:
            continue
        if isinstance(value, list):
            value = tuple(value)
        groups.setdefault(_GROUP_OF[dest], {})[dest] = value
    model = groups["model"]
    if model.pop("swiglu"):  # Megatron-LM's flag and its FFN size (--ffn-hidden-size wins)
        model["glu_activation"] = "swiglu"
        if model["ffn_hidden_size"] is None:
            model["ffn_hidden_size"] = megatron_lm_swiglu_ffn_size(model["hidden_size"])
    groups["model"]["position_embedding_type"] = POSITION_EMBEDDING_ALIASES.get(
        groups["model"]["position_embedding_type"], groups["model"]["position_embedding_type"])
    tok = groups["data"]["tokenizer_type"]
    groups["data"]["tokenizer_type"] = TOKENIZER_TYPE_ALIASES.get(tok, tok)
    return Config().replace(**groups)


def parse_config(argv: Optional[Sequence[str]] = None) -> Config:
    parser = build_parser()
    return config_from_args(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
