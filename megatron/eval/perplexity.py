"""Validation loss and perplexity over the first batches of a split."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megatron.data.batch import make_batch


def evaluate_loss(engine, loader, max_batches: int, eod: int, reset_attention_mask: bool,
                  layout, **prefix_lm_options) -> Optional[float]:
    """Token-weighted mean loss over up to max_batches micro-batches per DP rank.
    prefix_lm_options: make_batch's prefix_lm / loss_on_targets_only / seed."""
    totals = torch.zeros(2, dtype=torch.float64, device=layout.device)
    for i, sample in enumerate(loader):
        if i >= max_batches:
            break
        loss_sum, n = engine.eval_loss(make_batch(sample, eod, reset_attention_mask,
                                                **prefix_lm_options))
        totals += torch.tensor([loss_sum, n], dtype=torch.float64, device=layout.device)
    dist.all_reduce(totals, group=layout.dp_group)
    if totals[1] == 0:
        return None
    return (totals[0] / totals[1]).item()
