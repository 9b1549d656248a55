"""--sync-tp-duplicated-parameters: keep the parameters every TP rank holds a copy of identical.

Norm weights and biases, row-parallel output biases and learned position embeddings are
replicated on each TP rank and get identical gradients, but bf16 rounding on different ranks
can still let the copies drift apart (BigScience saw it on BLOOM-176B). Like Megatron-DeepSpeed,
this averages the copies over the TP group before every forward (a forward pre-hook on the
model, applied from outside it). Tensor-parallel shards (megatron-core marks them with
`tensor_model_parallel = True`) are left alone.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def tp_duplicated_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if not getattr(p, "tensor_model_parallel", False)]


@torch.no_grad()
def average_over_tp(params: list[torch.Tensor], group, tp_size: int) -> None:
    """In place: each tensor becomes the mean of its copies across the TP group."""
    if tp_size == 1 or not params:
        return
    for dtype in {p.dtype for p in params}:  # one flat all-reduce per dtype
        same = [p for p in params if p.dtype == dtype]
        flat = torch.cat([p.reshape(-1) for p in same])
        dist.all_reduce(flat, group=group)  # SUM then divide: gloo has no AVG
        flat /= tp_size
        offset = 0
        for p in same:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def sync_tp_duplicated_before_forward(model: torch.nn.Module, layout) -> None:
    """Register the forward pre-hook that averages `model`'s TP-duplicated parameters."""
    if layout.tp == 1:
        return
    params = tp_duplicated_parameters(model)
    model.register_forward_pre_hook(
        lambda module, inputs: average_over_tp(params, layout.tp_group, layout.tp))
