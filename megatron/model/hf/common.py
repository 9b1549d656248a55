"""Helpers shared by the HF family mappings (single process, TP = 1 tensors)."""
from __future__ import annotations

import torch


def qkv_from_separate(q, k, v, num_heads: int) -> torch.Tensor:
    """Separate q/k/v weights (H, ...) or biases (H,) -> our fused per-head layout (nh, 3, hs)."""
    parts = [t.reshape(num_heads, -1, *t.shape[1:]) for t in (q, k, v)]  # (nh, hs, ...)
    return torch.stack(parts, dim=1).reshape(-1, *q.shape[1:])  # (nh * 3 * hs, ...)


def qkv_to_separate(w, num_heads: int):
    """Inverse of qkv_from_separate: fused (3H, ...) -> (q, k, v)."""
    per_head = w.reshape(num_heads, 3, -1, *w.shape[1:])  # (nh, 3, hs, ...)
    return tuple(per_head[:, i].reshape(-1, *w.shape[1:]).contiguous() for i in range(3))


def pad_vocab(w: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Append zero rows up to the padded vocabulary."""
    if w.shape[0] > vocab_size:
        raise ValueError(f"HF vocabulary {w.shape[0]} exceeds the padded vocab_size {vocab_size}")
    return torch.cat([w, w.new_zeros(vocab_size - w.shape[0], *w.shape[1:])]) if w.shape[0] < vocab_size else w


def rope_settings(hf_config, default_fraction: float = 1.0):
    """(rope_theta, partial_rotary_factor) from transformers>=5 `rope_parameters` or older attrs."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {params['rope_type']!r} (RoPE scaling) is not supported")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    fraction = params.get("partial_rotary_factor",
                          getattr(hf_config, "rotary_pct",
                                  getattr(hf_config, "partial_rotary_factor", default_fraction)))
    return float(theta), float(fraction)


def norm(sd: dict, src: str, dst: str, out: dict, bias: bool = True) -> None:
    out[f"{dst}.weight"] = sd[f"{src}.weight"]
    if bias:
        out[f"{dst}.bias"] = sd[f"{src}.bias"]


def weights_only(sd: dict) -> dict:
    """Drop megatron-core's `_extra_state` placeholders from one of our state dicts."""
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
