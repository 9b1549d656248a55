"""Turn a collated GPTDataset micro-batch into model inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Batch:
    tokens: torch.Tensor        # (B, T) int64
    labels: torch.Tensor        # (B, T) int64
    loss_mask: torch.Tensor     # (B, T) float
    position_ids: torch.Tensor  # (B, T) int64
    document_ids: Optional[torch.Tensor] = None  # (B, T) int64, when attention resets at EOD

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None
                       for t in (self.tokens, self.labels, self.loss_mask, self.position_ids,
                                 self.document_ids)))

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()


def document_ids_from_tokens(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """(B, T) id of the document each token belongs to; an EOD ends its own document."""
    after_eod = torch.zeros_like(tokens)
    after_eod[:, 1:] = (tokens[:, :-1] == eod).long()
    return torch.cumsum(after_eod, dim=1)


def make_batch(sample: dict, eod: int, reset_attention_mask: bool) -> Batch:
    tokens = sample["tokens"].long()
    return Batch(tokens=tokens, labels=sample["labels"].long(),
                 loss_mask=sample["loss_mask"].float(), position_ids=sample["position_ids"].long(),
                 document_ids=document_ids_from_tokens(tokens, eod) if reset_attention_mask
                 else None)
