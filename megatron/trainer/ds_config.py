"""The DeepSpeed config of a run: the user's JSON (ZeRO, dtypes of optimizer state and gradient
accumulation, ...) completed from the flags, which own batch sizes, precision and clipping."""
from __future__ import annotations

import copy

import torch

from megatron.config.schema import Config
from megatron.config.validate import check_bf16_optimizer, check_deepspeed_config, \
    data_parallel_size, global_batch_size, zero_stage


def uses_local_bf16_optimizer(cfg: Config, world_size: int) -> bool:
    """--bf16-optimizer: does megatron/trainer/master_adamw.py replace DeepSpeed's bf16
    optimizer? 'auto' picks it where DeepSpeed's would shard nothing (DP 1, PP 1) and the JSON
    asks neither bf16 gradient accumulation nor offloading."""
    t = cfg.training
    choice = t.bf16_optimizer
    pp = cfg.parallel.pipeline_model_parallel_size
    if choice == "local":
        check_bf16_optimizer(cfg)  # bf16, PP 1
        return True
    if not t.bf16 or choice == "deepspeed":
        return False
    ds = check_deepspeed_config(cfg, world_size) or {}
    accum = str(ds.get("data_types", {}).get("grad_accum_dtype", "fp32"))
    zero = ds.get("zero_optimization", {})
    offload = any(zero.get(k, {}).get("device", "none") != "none"
                  for k in ("offload_optimizer", "offload_param"))
    return (pp == 1 and data_parallel_size(cfg, world_size) == 1 and zero_stage(cfg, ds) < 3
            and not offload and accum in ("fp32", "float32", "torch.float32"))


def local_communication_dtype(cfg: Config, world_size: int) -> torch.dtype:
    """The dtype --bf16-optimizer local all-reduces gradients in at DP > 1: the JSON's
    `communication_data_type` (DeepSpeed's key), by default bf16 as DeepSpeed's for bf16."""
    value = (check_deepspeed_config(cfg, world_size) or {}).get("communication_data_type")
    choices = {None: torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32}
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"--deepspeed_config {cfg.training.deepspeed_config}: "
                         f"communication_data_type {value!r} with --bf16-optimizer local: use "
                         f"\"bf16\" or \"fp32\"")
    return choices[key]


def build_deepspeed_config(cfg: Config, world_size: int) -> dict:
    t = cfg.training
    ds = copy.deepcopy(check_deepspeed_config(cfg, world_size) or {})
    _refuse_optimizer_sections(ds)
    dp = data_parallel_size(cfg, world_size)
    gbs = global_batch_size(cfg, world_size)
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = gbs // (t.micro_batch_size * dp)
    ds["train_batch_size"] = gbs
    ds.setdefault("steps_per_print", 10**9)  # our loop logs; keep DeepSpeed quiet
    ds.setdefault("wall_clock_breakdown", False)
    # DeepSpeed's throughput timer (on by default) synchronizes the device at every forward
    # and after every optimizer step: the GPU then idles while the host reads the next batch
    # and launches the next step. Our loop measures throughput itself.
    ds.setdefault("timers", {}).setdefault("throughput", {}).setdefault("enabled", False)
    if uses_local_bf16_optimizer(cfg, world_size):
        # DeepSpeed runs our optimizer as an fp32 client one at stage 0: no bf16 wrapper, no
        # clipping of its own (the optimizer clips on the device), nothing to all-reduce (the
        # optimizer does it during the backward)
        ds.pop("data_types", None)
        ds.pop("communication_data_type", None)  # read by local_communication_dtype
        ds.update(bf16={"enabled": False}, fp16={"enabled": False}, gradient_clipping=0.0)
        ds.setdefault("zero_optimization", {})["stage"] = 0
        return ds
    ds["gradient_clipping"] = cfg.optimizer.clip_grad
    ds.setdefault("bf16", {})["enabled"] = t.bf16
    ds.setdefault("fp16", {})["enabled"] = t.fp16
    if t.fp16:
        ds["fp16"].setdefault("loss_scale", 0)  # dynamic loss scaling
        ds["fp16"].setdefault("initial_scale_power", 16)
    stage = zero_stage(cfg, ds)
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = stage
    accum = ds.get("data_types", {}).get("grad_accum_dtype")
    if t.bf16 and zero["stage"] == 0 and accum in ("fp32", "float32"):
        # BigScience's "bf16 at ZeRO-0" meant DeepSpeed's BF16_Optimizer (fp32 accumulation,
        # master weights and Adam states sharded over DP by the optimizer itself). DeepSpeed
        # 0.19 reaches that optimizer only through stage 1 and raises NotImplementedError for
        # stage 0 with bf16 weights and fp32 accumulation; stage 1 is the same optimizer.
        zero["stage"] = 1
    if zero["stage"] == 3:
        raise ValueError("ZeRO stage 3 is not supported with tensor-parallel layers; use 0, 1 "
                         "or 2 (--zero-stage or zero_optimization.stage in --deepspeed_config)")
    return ds


def _refuse_optimizer_sections(ds: dict) -> None:
    # The optimizer and LR schedule are ours (decoupled weight decay groups, sample-based
    # schedules); a JSON that defines them would be silently overridden, so refuse it.
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"--deepspeed_config: remove the '{key}' section; set it with flags "
                             f"(--lr, --adam-beta1/2, --weight-decay, --lr-decay-style, ...)")
