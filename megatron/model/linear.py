"""megatron-core's tensor-parallel linear layers, with a plain `F.linear` forward at TP = 1.

At TP = 1 megatron-core's forward is one matmul (+ bias) wrapped in its own autograd Function,
behind a helper that calls `warnings.warn` on a code path torch.compile cannot trace: every
linear layer broke the compiled transformer layer into pieces (five graphs per layer instead
of one) and nothing around a matmul could be fused with it. With one TP rank there is nothing
to communicate, so `F.linear` computes the same product with the same parameters (same names,
same attributes, same state dicts). TP > 1 and sequence parallelism keep megatron-core's
forward and its collectives.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear


def _plain_linear(layer, x, weight):
    """(y, bias returned for the caller to add) as megatron-core returns them."""
    bias = None if layer.skip_bias_add else layer.bias
    y = F.linear(x, layer.weight if weight is None else weight, bias)
    return y, (layer.bias if layer.skip_bias_add else None)


def _single_rank(layer) -> bool:
    return torch.distributed.get_world_size(layer.tp_group) == 1 and not layer.sequence_parallel


class ColumnLinear(ColumnParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.single_rank = _single_rank(self)

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None):
        """x (..., in) -> ((..., out / TP), bias or None)."""
        if self.single_rank:
            return _plain_linear(self, x, weight)
        return super().forward(x, weight)


class RowLinear(RowParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.single_rank = _single_rank(self)

    def forward(self, x: torch.Tensor):
        """x (..., in / TP) -> ((..., out) summed over TP, bias or None)."""
        if self.single_rank:
            return _plain_linear(self, x, None)
        return super().forward(x)
