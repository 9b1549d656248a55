"""Attention masks (True = may attend) for causal, prefix-LM and document (packed) batches.

allowed(b, q, k) = (k <= q  or  k < prefix_lengths[b])  and  document_ids[b, q] == document_ids[b, k]

The diagonal is always allowed, so no row is fully masked. The same rule comes as a dense
boolean tensor (eager / SDPA) and as a FlexAttention mask_mod / BlockMask.
"""
from __future__ import annotations

from typing import Optional

import torch


def is_plain_causal(prefix_lengths: Optional[torch.Tensor], document_ids: Optional[torch.Tensor]) -> bool:
    return prefix_lengths is None and document_ids is None


def dense_mask(seq_len: int, device, prefix_lengths: Optional[torch.Tensor] = None,
               document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, 1, T, T) bool, or (1, 1, T, T) for plain causal."""
    q = torch.arange(seq_len, device=device)[:, None]
    k = torch.arange(seq_len, device=device)[None, :]
    allowed = (k <= q)[None]  # (1, T, T)
    if prefix_lengths is not None:
        allowed = allowed | (k[None] < prefix_lengths.to(device)[:, None, None])  # (B, T, T)
    if document_ids is not None:
        allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])  # (B, T, T)
    return allowed[:, None]


def mask_mod(prefix_lengths: Optional[torch.Tensor] = None,
             document_ids: Optional[torch.Tensor] = None):
    """The same rule as a FlexAttention mask_mod(b, h, q_idx, kv_idx)."""
    def mod(b, h, q_idx, kv_idx):
        allowed = kv_idx <= q_idx
        if prefix_lengths is not None:
            allowed = allowed | (kv_idx < prefix_lengths[b])
        if document_ids is not None:
            allowed = allowed & (document_ids[b, q_idx] == document_ids[b, kv_idx])
        return allowed
    return mod


def block_mask(seq_len: int, device, prefix_lengths: Optional[torch.Tensor] = None,
               document_ids: Optional[torch.Tensor] = None):
    """FlexAttention BlockMask; per-sample (B) when prefix/document info is given."""
    from torch.nn.attention.flex_attention import create_block_mask
    batch = None
    if prefix_lengths is not None:
        batch = prefix_lengths.shape[0]
    elif document_ids is not None:
        batch = document_ids.shape[0]
    return create_block_mask(mask_mod(prefix_lengths, document_ids), B=batch, H=None,
                             Q_LEN=seq_len, KV_LEN=seq_len, device=device)
