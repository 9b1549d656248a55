"""AdamW with decoupled weight decay, none on biases and norm weights."""
from __future__ import annotations

import torch

from megatron.config.schema import OptimizerConfig


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
