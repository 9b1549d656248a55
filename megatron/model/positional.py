"""Position information: sinusoidal table, rotary (RoPE) and ALiBi.

Learned absolute embeddings are a plain nn.Embedding in embedding.py. RoPE uses real cos/sin
and the rotate-half layout of GPT-NeoX / Llama (HF compatible), on the first `rot_dim` dims.
"""
from __future__ import annotations

import math

import torch


def sinusoidal_embedding(position_ids: torch.Tensor, dim: int, dtype) -> torch.Tensor:
    """Fixed [sin | cos] embedding (Megatron-DeepSpeed's layout). position_ids (B, T) -> (B, T, dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=position_ids.device).float() / dim))
    angles = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def rotary_dim(head_dim: int, rotary_percent: float) -> int:
    return int(head_dim * rotary_percent)


def rotary_cos_sin(position_ids: torch.Tensor, rot_dim: int, base: float):
    """position_ids (B, T) -> cos, sin each (B, T, 1, rot_dim) in fp32, for (B, T, nh, hs) q/k."""
    exponent = torch.arange(0, rot_dim, 2, dtype=torch.int64, device=position_ids.device).float()
    inv_freq = 1.0 / (base ** (exponent / rot_dim))  # (rot/2,)
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, rot/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None]  # (B, T, 1, rot)
    return emb.cos(), emb.sin()


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, nh, hs), cos/sin (B, T, 1, rot); rotates the first rot dims, passes the rest.

    Computed in x's dtype (cos/sin are made in fp32, then cast), as Megatron-LM and HF do: an
    fp32 round trip of q and k costs more memory traffic than the rotation itself."""
    rot = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes as in the paper / BLOOM, including non-power-of-two head counts: (nh,)."""
    def power_of_2_slopes(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_2_slopes(closest)
    if closest != num_heads:  # interleave in the odd slopes of the next power of two
        slopes += power_of_2_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """-slope * |pos_q - pos_k|: slopes (nh,), position_ids (B, T) -> (B, nh, T, T) fp32.

    Under a causal mask this equals BLOOM's `slope * pos_k` up to a per-row constant, which
    softmax ignores; the symmetric form also suits the bidirectional prefix of a prefix-LM.
    """
    pos = position_ids.float()
    dist = (pos[:, :, None] - pos[:, None, :]).abs()  # (B, T, T)
    return -slopes.float()[None, :, None, None] * dist[:, None]
