"""Prefix-LM split points and masks (for `--prefix-lm` / `--loss-on-targets-only`).

Positions follow Megatron: `tokens` (B, T) is the model input, `labels[:, t] = text[:, t + 1]`,
and the loss mask is aligned with the labels. A prefix of length p means input positions
[0, p) attend to each other bidirectionally; the targets are the tokens after it. The last
prefix position predicts the first target, so with loss on targets only
`loss_mask[b, t] = 1` for t >= p - 1 (as Megatron-DeepSpeed does).
"""
from __future__ import annotations

from typing import Optional, Union

import torch


def prefix_lengths(batch_size: int, seq_length: int, seed: int,
                   prefix_length: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """(B,) int64 prefix lengths: `prefix_length` if given (one int or one per sample), else
    uniform in [1, T-1] per sample from a generator seeded with `seed` (at least one prefix and
    one target token)."""
    if prefix_length is not None:
        lengths = torch.as_tensor(prefix_length, dtype=torch.long).expand(batch_size).clone()
        if lengths.min() < 1 or lengths.max() > seq_length:
            raise ValueError(f"prefix_length {prefix_length} outside [1, {seq_length}]")
        return lengths
    if seq_length < 2:
        raise ValueError(f"a random prefix split needs seq_length >= 2, got {seq_length}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, seq_length, (batch_size,), generator=generator)


def targets_loss_mask(lengths: torch.Tensor, seq_length: int) -> torch.Tensor:
    """(B, T) float32: 1 from the last prefix position on (t >= p - 1), the positions whose
    labels are targets."""
    positions = torch.arange(seq_length, device=lengths.device)
    return (positions[None, :] >= (lengths[:, None] - 1)).float()


def prefix_lm_masks(tokens: torch.Tensor, seed: int,
                    prefix_length: Optional[Union[int, torch.Tensor]] = None,
                    loss_on_targets_only: bool = True):
    """-> (prefix_lengths (B,), loss_mask (B, T) float32, attention_mask (B, 1, T, T) bool).

    attention_mask is True where attention is *blocked* (Megatron's convention): causal,
    except that the prefix block [0, p) x [0, p) is fully visible.
    """
    batch, seq = tokens.shape
    lengths = prefix_lengths(batch, seq, seed, prefix_length).to(tokens.device)
    positions = torch.arange(seq, device=tokens.device)
    if loss_on_targets_only:
        loss_mask = targets_loss_mask(lengths, seq)
    else:
        loss_mask = torch.ones(batch, seq, device=tokens.device)
    causal = positions[None, :] <= positions[:, None]  # (T, T): query row sees key column
    in_prefix = positions[None, :] < lengths[:, None]  # (B, T)
    visible = causal[None] | (in_prefix[:, :, None] & in_prefix[:, None, :])
    return lengths, loss_mask, ~visible[:, None]
