"""LayerNorm / RMSNorm computed in fp32 (torch kernels on upcast inputs; apex is not needed)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype=torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(hidden_size, dtype=dtype))

    def forward(self, x):  # (..., H)
        y = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dtype=torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))

    def forward(self, x):  # (..., H)
        return F.rms_norm(x.float(), x.shape[-1:], self.weight.float(), self.eps).to(x.dtype)


def make_norm(cfg, dtype=torch.float32) -> nn.Module:
    cls = {"LayerNorm": LayerNorm, "RMSNorm": RMSNorm}[cfg.normalization]
    return cls(cfg.hidden_size, cfg.layernorm_epsilon, dtype=dtype)
