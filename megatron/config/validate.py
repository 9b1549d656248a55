"""Start-up checks of a `Config` against the job: clear errors that name flags and values."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from megatron.config.schema import Config, ParallelConfig

DEFAULT_PARTITION_METHOD = ParallelConfig.pp_partition_method
DEFAULT_ZERO_STAGE = 1  # Megatron-DeepSpeed's default


class ConfigError(ValueError):
    """A flag, or a combination of flags, this run cannot use."""


# field (group, name) -> (default that means "off", the flag, the feature it would need)
NOT_IMPLEMENTED_YET = {
    ("parallel", "sequence_parallel"): (False, "--sequence-parallel", "sequence parallelism"),
    ("training", "partition_activations"): (
        False, "--partition-activations", "activation partitioning over TP ranks"),
}


def check_not_implemented(cfg: Config) -> None:
    for (group, name), (off, flag, where) in NOT_IMPLEMENTED_YET.items():
        value = getattr(getattr(cfg, group), name)
        if value != off:
            raise ConfigError(f"{flag} (got {value!r}) is not implemented yet ({where}); "
                              f"remove the flag to run")


def no_effect_warning(cfg: Config) -> Optional[str]:
    """One warning naming every flag the user set that is accepted only for compatibility
    (cli.NO_EFFECT_FLAGS), or None."""
    from megatron.config.cli import _GROUP_OF, NO_EFFECT_FLAGS, build_parser
    if not NO_EFFECT_FLAGS:  # filled while the parser is built
        build_parser()
    given = []
    for dest, flag in NO_EFFECT_FLAGS.items():
        value = getattr(getattr(cfg, _GROUP_OF[dest]), dest)
        if value not in (None, False):
            given.append(flag if value is True else f"{flag} {value}")
    if not given:
        return None
    return (f"{', '.join(given)}: accepted for Megatron-DeepSpeed compatibility, has no effect "
            f"here (see docs/cli.md)")


def parse_iteration_ranges(ranges) -> list[tuple[int, int]]:
    """("10-20", "35-35") -> [(10, 20), (35, 35)]; inclusive, 1-based iterations."""
    out = []
    for r in ranges or ():
        try:
            start, end = (int(x) for x in r.split("-"))
        except ValueError:
            raise ConfigError(f"--skip-train-iteration-range {r}: expected START-END, e.g. "
                              f"1000-1100") from None
        if not 1 <= start <= end:
            raise ConfigError(f"--skip-train-iteration-range {r}: need 1 <= START <= END")
        out.append((start, end))
    return out


def data_parallel_size(cfg: Config, world_size: int) -> int:
    tp = cfg.parallel.tensor_model_parallel_size
    pp = cfg.parallel.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ConfigError(f"--tensor-model-parallel-size {tp} and --pipeline-model-parallel-size "
                          f"{pp} must be >= 1")
    if world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp} = {tp * pp}: launch a multiple of {tp * pp} "
            f"processes")
    return world_size // (tp * pp)


def global_batch_size(cfg: Config, world_size: int) -> int:
    t = cfg.training
    return t.global_batch_size or t.micro_batch_size * data_parallel_size(cfg, world_size)


def schedule_samples(cfg: Config, gbs: int) -> tuple[int, int, int]:
    """(train samples, warmup samples, decay samples) from the --train-*/--lr-* flags."""
    t = cfg.training
    seq = cfg.model.seq_length
    train = t.train_samples if t.train_samples is not None else t.train_iters * gbs
    if t.lr_decay_tokens is not None:  # every sample has seq_length tokens
        decay = -(-t.lr_decay_tokens // seq)
    elif t.lr_decay_samples is not None:
        decay = t.lr_decay_samples
    elif t.lr_decay_iters is not None:
        decay = t.lr_decay_iters * gbs
    else:
        decay = train
    if t.lr_warmup_fraction is not None:
        warmup = int(t.lr_warmup_fraction * decay)
    elif t.lr_warmup_tokens:
        warmup = -(-t.lr_warmup_tokens // seq)
    elif t.lr_warmup_samples:
        warmup = t.lr_warmup_samples
    else:
        warmup = t.lr_warmup_iters * gbs
    if warmup >= decay:
        raise ConfigError(f"LR warmup ({warmup} samples) must be shorter than the decay period "
                          f"({decay} samples): check --lr-warmup-* against --lr-decay-* and "
                          f"--train-iters/--train-samples")
    if t.lr_decay_style == "WSD":
        if t.lr_wsd_decay_samples is None and t.lr_wsd_decay_iters is None:
            raise ConfigError("--lr-decay-style WSD needs --lr-wsd-decay-samples (or "
                              "--lr-wsd-decay-iters): the length of the final decay")
        wsd = t.lr_wsd_decay_samples or t.lr_wsd_decay_iters * gbs
        if wsd > decay - warmup:
            raise ConfigError(f"WSD decay ({wsd} samples) is longer than the period after "
                              f"warmup ({decay - warmup} samples)")
    return train, warmup, decay


def check_model_shape(cfg: Config) -> None:
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    pp = cfg.parallel.pipeline_model_parallel_size
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(f"--hidden-size {m.hidden_size} is not divisible by "
                          f"--num-attention-heads {m.num_attention_heads}")
    if m.num_attention_heads % tp:
        raise ConfigError(f"--num-attention-heads {m.num_attention_heads} is not divisible by "
                          f"--tensor-model-parallel-size {tp}")
    if m.ffn_size < 1:
        raise ConfigError(f"FFN size {m.ffn_size} (--ffn-hidden-size, or --swiglu's "
                          f"int(4 x --hidden-size {m.hidden_size} x 2/3 / 64) x 64) must be "
                          f"positive: give --ffn-hidden-size")
    if m.ffn_size % tp:
        raise ConfigError(f"MLP size {m.ffn_size} (--ffn-hidden-size) is not divisible by "
                          f"--tensor-model-parallel-size {tp}")
    if m.num_layers < pp:
        raise ConfigError(f"--num-layers {m.num_layers} is fewer than "
                          f"--pipeline-model-parallel-size {pp}: a stage would have no layers")
    method = cfg.parallel.pp_partition_method
    if m.num_layers % pp and method == DEFAULT_PARTITION_METHOD:
        # Uneven splits are a choice (BLOOM-176B: 70 layers on PP 12 with
        # 'type:transformer|embedding'), never the default's accident.
        raise ConfigError(
            f"--num-layers {m.num_layers} is not divisible by --pipeline-model-parallel-size "
            f"{pp}, so --pp-partition-method {method} (the default) would give stages "
            f"different numbers of layers; choose the uneven split on purpose with "
            f"--pp-partition-method 'type:transformer|embedding' (counts the embedding and "
            f"head as layers, as BLOOM-176B does) or --pp-partition-method parameters, or make "
            f"--num-layers a multiple of {pp}")
    if m.seq_length > m.max_positions:
        raise ConfigError(f"--seq-length {m.seq_length} exceeds --max-position-embeddings "
                          f"{m.max_position_embeddings}")


def check_model(cfg: Config) -> None:
    """The model's own build check (megatron/model/validate.py, also run where the model is
    built) at start-up, so a combination it refuses is a clean error, not a rank traceback."""
    from megatron.model.validate import check_model_config  # model rules live with the model
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    if m.vocab_size <= 0:  # padded from the tokenizer later; any valid size for the check
        m = dataclasses.replace(m, vocab_size=max(tp, 1) * max(m.make_vocab_size_divisible_by, 1))
    try:
        check_model_config(m, tp)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    half_only = [("--mlp-kernel quack", "--mlp-kernel torch", m.mlp_kernel == "quack"),
                 ("--attention-kernel fa4", "--attention-kernel auto", m.attention_kernel == "fa4")]
    for option, instead, chosen in half_only:  # the optional Hopper kernels
        if chosen and cfg.training.precision == "fp32":
            raise ConfigError(f"{option} runs bf16 or fp16 (--bf16 / --fp16); this run is fp32: "
                              f"add one or use {instead}")
    if m.attention_kernel == "fa4" and cfg.data.reset_attention_mask:
        raise ConfigError("--attention-kernel fa4 runs plain causal masks, not "
                          "--reset-attention-mask's per-document masks; use --attention-kernel "
                          "auto (FlexAttention)")


def check_batch(cfg: Config, world_size: int) -> None:
    t = cfg.training
    dp = data_parallel_size(cfg, world_size)
    if t.micro_batch_size < 1:
        raise ConfigError(f"--micro-batch-size {t.micro_batch_size} must be >= 1")
    gbs = global_batch_size(cfg, world_size)
    if gbs % (t.micro_batch_size * dp):
        raise ConfigError(
            f"--global-batch-size {gbs} is not divisible by --micro-batch-size "
            f"{t.micro_batch_size} x data-parallel size {dp} = {t.micro_batch_size * dp} "
            f"(world {world_size} / (TP x PP))")
    if (t.train_iters is None) == (t.train_samples is None):
        raise ConfigError("give exactly one of --train-iters and --train-samples "
                          f"(got --train-iters {t.train_iters}, --train-samples {t.train_samples})")
    if t.rampup_batch_size is not None:
        check_rampup(cfg, gbs, t.micro_batch_size * dp)
    schedule_samples(cfg, gbs)
    if t.checkpoint_activations and t.recompute_granularity == "selective":
        raise ConfigError("--checkpoint-activations (full recomputation) contradicts "
                          "--recompute-granularity selective: give one of them")
    if t.bf16 and t.fp16:
        raise ConfigError("--bf16 and --fp16 are mutually exclusive")


def check_rampup(cfg: Config, gbs: int, mbs_times_dp: int) -> None:
    t = cfg.training
    start, increment, samples = t.rampup_batch_size
    flag = f"--rampup-batch-size {start} {increment} {samples}"
    if start < 1 or increment < 1 or samples < 0 or start > gbs:
        raise ConfigError(f"{flag}: need 1 <= START <= --global-batch-size {gbs}, INCREMENT >= 1 "
                          f"and SAMPLES >= 0")
    if (gbs - start) % increment:
        raise ConfigError(f"{flag}: --global-batch-size {gbs} minus START {start} is not a "
                          f"multiple of INCREMENT {increment}")
    if start % mbs_times_dp or increment % mbs_times_dp:
        raise ConfigError(f"{flag}: START and INCREMENT must be multiples of --micro-batch-size "
                          f"x data-parallel size = {mbs_times_dp}")
    iter_flags = [f for f, v in (("--train-iters", t.train_iters),
                                 ("--lr-warmup-iters", t.lr_warmup_iters),
                                 ("--lr-decay-iters", t.lr_decay_iters)) if v]
    if iter_flags:
        raise ConfigError(f"{flag}: steps have different sizes during rampup, so give lengths in "
                          f"samples (--train-samples, --lr-warmup-samples/--lr-warmup-fraction, "
                          f"--lr-decay-samples) instead of {', '.join(iter_flags)}")


def check_deepspeed_config(cfg: Config, world_size: int) -> Optional[dict]:
    """Load --deepspeed_config and check its batch sizes and precision against the flags."""
    path = cfg.training.deepspeed_config
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"--deepspeed_config {path}: no such file")
    try:
        with open(path) as f:
            ds = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON ({e})") from e
    t = cfg.training
    dp = data_parallel_size(cfg, world_size)
    gbs = global_batch_size(cfg, world_size)
    want = {"train_micro_batch_size_per_gpu": ("--micro-batch-size", t.micro_batch_size),
            "train_batch_size": ("--global-batch-size", gbs),
            "gradient_accumulation_steps": ("--global-batch-size / (--micro-batch-size x DP)",
                                            gbs // max(1, t.micro_batch_size * dp))}
    for key, (flag, value) in want.items():
        if key in ds and ds[key] not in (value, "auto"):
            raise ConfigError(f"--deepspeed_config {path}: {key} = {ds[key]} contradicts {flag} "
                              f"= {value}; remove it from the JSON (flags set it) or make them "
                              f"agree")
    clip = ds.get("gradient_clipping", "auto")
    if clip != "auto" and float(clip) != cfg.optimizer.clip_grad:
        raise ConfigError(f"--deepspeed_config {path}: gradient_clipping = {clip} contradicts "
                          f"--clip-grad = {cfg.optimizer.clip_grad}; remove it from the JSON "
                          f"(flags set it) or make them agree")
    for key, flag, on in (("bf16", "--bf16", t.bf16), ("fp16", "--fp16", t.fp16)):
        enabled = ds.get(key, {}).get("enabled", False)
        if enabled not in ("auto",) and bool(enabled) != on and (enabled or on):
            raise ConfigError(f"--deepspeed_config {path}: {key}.enabled = {enabled} contradicts "
                              f"{flag} {'given' if on else 'not given'}")
    return ds


def check_data(cfg: Config) -> None:
    d = cfg.data
    if d.mock_data:
        return
    # data flag syntax lives with the data code
    from megatron.data import weighted_splits as ws
    from megatron.data.blend import parse_data_path
    if ws.uses_weighted_splits(d):
        if d.data_path:
            raise ConfigError("--data-path and the --*-weighted-split-paths flags are two ways to "
                              "give the data (BigScience's Mode 1 and Mode 2); use one")
        try:
            groups = ws.all_groups(d)
        except ws.WeightedSplitError as e:
            raise ConfigError(str(e)) from e
        sources = [(f"--{s}-weighted-split-paths group {g.name!r}", p.prefix)
                   for s in ws.SPLITS for g in groups[s] for p in g.parts]
    elif not d.data_path:
        raise ConfigError("--data-path is required (or --mock-data for random tokens)")
    else:
        sources = [("--data-path", prefix) for _, prefix in parse_data_path(d.data_path)]
    for where, prefix in sources:
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            raise ConfigError(f"{where} {prefix}: missing {', '.join(missing)} (give the "
                              f"prefix without .bin/.idx, e.g. data/corpus_text_document)")
        from megatron.data.gpt_datasets import IndexedDatasetError, check_indexed_dataset
        try:
            check_indexed_dataset(prefix)
        except IndexedDatasetError as e:
            raise ConfigError(f"{where} {prefix}: {e}") from e
    if d.tokenizer_type is None:
        raise ConfigError("--tokenizer-type is required with --data-path")


def check_prefix_lm(cfg: Config) -> None:
    """--loss-on-targets-only needs --prefix-lm. --prefix-lm with --reset-attention-mask is
    allowed: megatron/model/masks.py combines them (one prefix per sample, attention kept
    within each document: (k <= q or k < prefix) and same document)."""
    m, d = cfg.model, cfg.data
    if d.loss_on_targets_only and not m.prefix_lm:
        raise ConfigError("--loss-on-targets-only needs --prefix-lm (it drops the loss on the "
                          "prefix of each sample): add --prefix-lm or remove "
                          "--loss-on-targets-only")
    if m.prefix_lm and m.seq_length < 2:
        raise ConfigError(f"--prefix-lm needs --seq-length >= 2 (a prefix and a target token), "
                          f"got {m.seq_length}")


def check_logging(cfg: Config) -> None:
    """The profiling window; options that act between the losses and the update (DeepSpeed's
    pipeline engine has no such point: train_batch steps internally)."""
    lg = cfg.logging
    if lg.profile and not 0 <= lg.profile_step_start < lg.profile_step_end:
        raise ConfigError(f"--profile-step-start {lg.profile_step_start} and --profile-step-end "
                          f"{lg.profile_step_end}: need 0 <= start < end")
    if cfg.parallel.pipeline_model_parallel_size == 1:
        return
    if cfg.logging.log_per_layer_grad_norm:
        raise ConfigError("--log-per-layer-grad-norm needs --pipeline-model-parallel-size 1 "
                          "(DeepSpeed's pipeline engine applies the step inside train_batch, "
                          "with no point to read the gradients)")
    if cfg.training.loss_spike_action == "skip" and cfg.training.loss_spike_threshold:
        raise ConfigError("--loss-spike-action skip needs --pipeline-model-parallel-size 1; "
                          "with pipelines use --loss-spike-action stop and restart with "
                          "--skip-train-iteration-range")


def check_eval_harness(cfg: Config) -> None:
    t = cfg.training
    if not t.eval_harness_tasks:
        return
    if cfg.parallel.pipeline_model_parallel_size > 1:
        raise ConfigError("--eval-harness-tasks runs on the model being trained only with "
                          "--pipeline-model-parallel-size 1; evaluate pipeline checkpoints with "
                          "tasks/eval_harness/evaluate.py")
    if (t.eval_harness_interval or t.eval_interval or 0) < 1:
        raise ConfigError(f"--eval-harness-interval {t.eval_harness_interval} must be >= 1")
    if t.eval_harness_include_path and not os.path.isdir(t.eval_harness_include_path):
        raise ConfigError(f"--eval-harness-include-path {t.eval_harness_include_path}: not a "
                          f"directory")


def check_bf16_optimizer(cfg: Config) -> None:
    t = cfg.training
    if t.bf16_optimizer != "local":
        return
    if not t.bf16:
        raise ConfigError("--bf16-optimizer local needs --bf16")
    if cfg.parallel.pipeline_model_parallel_size > 1:
        raise ConfigError("--bf16-optimizer local runs with --pipeline-model-parallel-size 1 "
                          "only (the pipeline engine keeps DeepSpeed's); use deepspeed or auto")


def zero_stage(cfg: Config, ds: dict) -> int:
    """The run's ZeRO stage as the flags and the JSON `ds` give it: --zero-stage, else the
    JSON's, else Megatron-DeepSpeed's default."""
    if cfg.training.zero_stage is not None:
        return cfg.training.zero_stage
    return ds.get("zero_optimization", {}).get("stage", DEFAULT_ZERO_STAGE)


def check_cuda_graph(cfg: Config, world_size: int) -> None:
    """--enable-cuda-graph replays each layer's captured kernels (megatron/model/cuda_graphs.py):
    nothing in a layer may change between steps but the values of its inputs and weights."""
    t, m, par = cfg.training, cfg.model, cfg.parallel
    if not t.enable_cuda_graph:
        return
    unsupported = [
        (par.tensor_model_parallel_size > 1,
         f"--tensor-model-parallel-size {par.tensor_model_parallel_size} (needs 1)"),
        (par.pipeline_model_parallel_size > 1,
         f"--pipeline-model-parallel-size {par.pipeline_model_parallel_size} (needs 1)"),
        (m.hidden_dropout > 0, f"--hidden-dropout {m.hidden_dropout} (needs 0)"),
        (m.attention_dropout > 0, f"--attention-dropout {m.attention_dropout} (needs 0)"),
        (t.checkpoint_activations or t.recompute_granularity is not None,
         "activation recomputation (--checkpoint-activations / --recompute-granularity)"),
        (m.mlp_kernel != "torch", f"--mlp-kernel {m.mlp_kernel} (not tested with graphs)"),
        (m.attention_kernel == "fa4", "--attention-kernel fa4 (not tested with graphs)"),
    ]
    from megatron.trainer.ds_config import uses_local_bf16_optimizer
    dp = data_parallel_size(cfg, world_size)
    stage = zero_stage(cfg, check_deepspeed_config(cfg, world_size) or {})
    ours = t.bf16 and uses_local_bf16_optimizer(cfg, world_size)
    fp32_zero0 = not t.bf16 and not t.fp16 and stage == 0
    unsupported += [
        (not ours and not fp32_zero0,
         f"DeepSpeed's optimizer ({t.precision}, ZeRO stage {stage}): it holds the weights' "
         f"gradient-accumulation nodes, which a capture cannot use (needs --bf16 with "
         f"--bf16-optimizer local, or auto at DP 1; or fp32 at --zero-stage 0 on one GPU)"),
        (fp32_zero0 and dp > 1,
         f"fp32 at data-parallel size {dp} (DeepSpeed's all-reduce is not tested with graphs: "
         f"needs DP 1, or --bf16 with --bf16-optimizer local)"),
    ]
    bad = [why for hit, why in unsupported if hit]
    if bad:
        raise ConfigError("--enable-cuda-graph does not run with " + "; ".join(bad) +
                          ": change these or remove --enable-cuda-graph")


def check_manual_gc(cfg: Config) -> None:
    t = cfg.training
    if t.manual_gc_interval < 0:
        raise ConfigError(f"--manual-gc-interval {t.manual_gc_interval} must be 0 (no collection "
                          f"between steps) or a positive number of steps")
    if not t.manual_gc and (t.manual_gc_interval or not t.manual_gc_eval):
        flag = (f"--manual-gc-interval {t.manual_gc_interval}" if t.manual_gc_interval
                else "--no-manual-gc-eval")
        raise ConfigError(f"{flag} has no effect without --manual-gc: add it or remove the flag")


def validate_config(cfg: Config, world_size: int) -> None:
    check_not_implemented(cfg)
    check_eval_harness(cfg)
    check_logging(cfg)
    parse_iteration_ranges(cfg.training.skip_train_iteration_range)
    data_parallel_size(cfg, world_size)
    check_model_shape(cfg)
    check_model(cfg)
    check_prefix_lm(cfg)
    check_batch(cfg, world_size)
    check_deepspeed_config(cfg, world_size)
    check_bf16_optimizer(cfg)
    check_cuda_graph(cfg, world_size)
    check_manual_gc(cfg)
    check_data(cfg)
