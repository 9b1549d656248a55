"""AdamW with decoupled weight decay, none on biases and norm weights."""
from __future__ import annotations

import torch

from megatron.config.schema import OptimizerConfig
from megatron.parallel.layout import ParallelLayout


def param_groups(model: torch.nn.Module) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # biases and norm gains are 1-D; matrices and embeddings get weight decay
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, ocfg: OptimizerConfig) -> torch.optim.Optimizer:
    fused = torch.cuda.is_available()
    groups = param_groups(model)
    for g in groups:
        g["weight_decay"] = ocfg.weight_decay * g["wd_mult"]
    return torch.optim.AdamW(groups, lr=ocfg.lr, betas=(ocfg.adam_beta1, ocfg.adam_beta2),
                             eps=ocfg.adam_eps, weight_decay=ocfg.weight_decay, fused=fused)


def build_master_weight_optimizer(model: torch.nn.Module, ocfg: OptimizerConfig,
                                  layout: ParallelLayout,
                                  communication_dtype: torch.dtype = torch.bfloat16):
    """AdamW over fp32 masters of the (bf16) model, clipping to --clip-grad itself; at DP > 1
    gradients are all-reduced in communication_dtype."""
    from megatron.trainer.master_adamw import MasterWeightAdamW
    groups = param_groups(model)
    for g in groups:
        g["weight_decay"] = ocfg.weight_decay * g["wd_mult"]
    return MasterWeightAdamW(groups, lr=ocfg.lr, betas=(ocfg.adam_beta1, ocfg.adam_beta2),
                             eps=ocfg.adam_eps, weight_decay=ocfg.weight_decay,
                             clip_grad=ocfg.clip_grad, dp_size=layout.dp,
                             tp_group=layout.tp_group if layout.tp > 1 else None,
                             dp_group=layout.dp_group, model_order=list(model.parameters()),
                             communication_dtype=communication_dtype)
