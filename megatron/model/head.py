"""Output stage: final norm + vocab-parallel projection (tied to the word embedding or its own)."""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.model.linear import ColumnLinear
from torch import nn

from megatron.model.init import normal_init
from megatron.model.norms import make_norm


class OutputHead(nn.Module):
    def __init__(self, cfg, mp_config, dtype):
        super().__init__()
        self.tied = not cfg.untie_embeddings_and_output_weights
        self.final_norm = make_norm(cfg, dtype)
        # Tied: no weight of its own; the embedding's shard is passed to forward (as
        # megatron-core's GPTModel does), which also fits a DeepSpeed TiedLayerSpec later.
        tp_group = parallel_state.get_tensor_model_parallel_group()
        self.output_layer = ColumnLinear(
            cfg.hidden_size, cfg.vocab_size, config=mp_config, tp_group=tp_group, bias=False,
            gather_output=False, init_method=normal_init(cfg.init_method_std),
            skip_weight_param_allocation=self.tied)

    def forward(self, h, embedding_weight: Optional[torch.Tensor] = None):
        """h (B, T, H) -> vocab-parallel logits (B, T, V / TP)."""
        if self.tied and embedding_weight is None:
            raise ValueError("tied output head needs the word embedding weight")
        weight = embedding_weight if self.tied else None
        logits, _ = self.output_layer(self.final_norm(h), weight=weight)  # (B, T, V / TP)
        return logits
