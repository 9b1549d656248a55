"""L2 norms of a model split over ranks, each tensor counted once per data-parallel replica.

A tensor-parallel shard (`tensor_model_parallel`, set by megatron-core's parallel layers) counts
on every TP rank; a tensor duplicated over TP ranks (norms, row-parallel biases) counts on TP
rank 0 only; the copy of a tensor that DeepSpeed's pipeline replicates on another stage (the
tied embedding, `ds_pipe_replicated`) never counts.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def counted_here(p: torch.Tensor, tp_rank: int) -> bool:
    """Whether this rank's copy of parameter p enters a model-wide norm."""
    if getattr(p, "ds_pipe_replicated", False):
        return False
    return tp_rank == 0 or bool(getattr(p, "tensor_model_parallel", False))


def global_norm(tensors: list, group: Optional[dist.ProcessGroup],
                device: torch.device) -> torch.Tensor:
    """sqrt(sum over `group`'s ranks of their tensors' squared L2 norms): 0-d fp32 on `device`,
    multi-tensor kernels, no host sync. Pass only the tensors counted_here."""
    by_dtype: dict = {}  # _foreach_norm takes its multi-tensor kernel only for one dtype:
    for t in tensors:    # mixed bf16 and fp32 gradients fall back to one kernel per tensor
        by_dtype.setdefault(t.dtype, []).append(t)
    norms = [n for same in by_dtype.values()
             for n in torch._foreach_norm(same, 2, dtype=torch.float32)]
    sq = (torch.stack(norms).square().sum() if norms
          else torch.zeros((), dtype=torch.float32, device=device))
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(sq, group=group)
    return sq.sqrt()
