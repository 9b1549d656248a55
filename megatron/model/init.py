"""Weight initialisers: normal(0, std) and Megatron's depth-scaled variant for output projections."""
from __future__ import annotations

import math

import torch


def normal_init(std: float):
    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)
    return init_


def scaled_normal_init(std: float, num_layers: int):
    """For the projections that write into the residual stream (attention out, MLP fc2)."""
    return normal_init(std / math.sqrt(2.0 * num_layers))
