"""Turn a collated GPTDataset micro-batch into model inputs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import torch

from megatron.data.prefix_lm import prefix_lengths, targets_loss_mask


@dataclass
class Batch:
    tokens: torch.Tensor        # (B, T) int64
    labels: torch.Tensor        # (B, T) int64
    loss_mask: torch.Tensor     # (B, T) float
    position_ids: torch.Tensor  # (B, T) int64
    document_ids: Optional[torch.Tensor] = None  # (B, T) int64, when attention resets at EOD
    prefix_lengths: Optional[torch.Tensor] = None  # (B,) int64, with --prefix-lm

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None
                       for t in (self.tokens, self.labels, self.loss_mask, self.position_ids,
                                 self.document_ids, self.prefix_lengths)))

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()


def document_ids_from_tokens(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """(B, T) id of the document each token belongs to; an EOD ends its own document."""
    after_eod = torch.zeros_like(tokens)
    after_eod[:, 1:] = (tokens[:, :-1] == eod).long()
    return torch.cumsum(after_eod, dim=1)


def sample_seed(tokens: torch.Tensor, labels: torch.Tensor, seed: int) -> int:
    """A seed for one sample from its own text (tokens (T,), labels (T,)) and the run's seed.

    It depends only on what the sample holds, so every TP/PP rank, every DP layout and micro-batch
    size, and a resumed run draw the same prefix split for it (identical samples share a split).
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    h.update(tokens.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64)[-1:].contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & (2 ** 63 - 1)


def prefix_lm_split(tokens: torch.Tensor, labels: torch.Tensor, seed: int,
                    loss_on_targets_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) prefix lengths, (B, T) prefix-LM loss mask), each sample split on its own seed."""
    batch, seq = tokens.shape
    lengths = torch.cat([prefix_lengths(1, seq, sample_seed(tokens[b], labels[b], seed))
                         for b in range(batch)]).to(tokens.device)
    if loss_on_targets_only:
        return lengths, targets_loss_mask(lengths, seq)
    return lengths, torch.ones(batch, seq, device=tokens.device)


def make_batch(sample: dict, eod: int, reset_attention_mask: bool, *, prefix_lm: bool = False,
               loss_on_targets_only: bool = False, seed: int = 0) -> Batch:
    """Model inputs from a collated sample dict (tokens, labels, loss_mask, position_ids).

    reset_attention_mask: document ids from EOD tokens (attention stays within a document).
    prefix_lm: a random split point per sample, drawn from the sample's contents and `seed`
    (see `sample_seed`): positions before it attend bidirectionally (`prefix_lengths`).
    loss_on_targets_only: additionally no loss on the prefix (combined with the dataset's own
    loss mask, e.g. --eod-mask-loss).
    """
    if loss_on_targets_only and not prefix_lm:
        raise ValueError("loss_on_targets_only needs prefix_lm")
    tokens = sample["tokens"].long()
    labels = sample["labels"].long()
    loss_mask = sample["loss_mask"].float()
    lengths = None
    if prefix_lm:
        lengths, prefix_mask = prefix_lm_split(tokens, labels, seed, loss_on_targets_only)
        loss_mask = loss_mask * prefix_mask.to(loss_mask.device)
    return Batch(tokens=tokens, labels=labels, loss_mask=loss_mask,
                 position_ids=sample["position_ids"].long(),
                 document_ids=document_ids_from_tokens(tokens, eod) if reset_attention_mask
                 else None,
                 prefix_lengths=lengths)
