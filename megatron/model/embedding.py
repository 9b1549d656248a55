"""Input stage: vocab-parallel word embedding (+ learned/sinusoidal positions, optional LN, dropout)."""
from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import VocabParallelEmbedding
from torch import nn

from megatron.model.init import normal_init
from megatron.model.norms import make_norm
from megatron.model.positional import sinusoidal_embedding
from megatron.model.rng import DropoutRNG, dropout


class Embedding(nn.Module):
    def __init__(self, cfg, mp_config, rng: DropoutRNG, dtype):
        super().__init__()
        self.cfg, self.rng = cfg, rng
        self.word_embeddings = VocabParallelEmbedding(
            cfg.vocab_size, cfg.hidden_size, init_method=normal_init(cfg.init_method_std),
            config=mp_config, tp_group=parallel_state.get_tensor_model_parallel_group())
        if cfg.position_embedding_type == "learned_absolute":  # replicated on every TP rank
            self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size, dtype=dtype)
            normal_init(cfg.init_method_std)(self.position_embeddings.weight)
        if cfg.embed_layernorm:
            self.norm = make_norm(cfg, dtype)

    def forward(self, tokens, position_ids):
        """tokens, position_ids (B, T) -> hidden (B, T, H), replicated across TP ranks."""
        cfg = self.cfg
        h = self.word_embeddings(tokens)  # (B, T, H), all-reduced over the vocab shards
        if cfg.position_embedding_type == "learned_absolute":
            h = h + self.position_embeddings(position_ids)
        elif cfg.position_embedding_type == "sinusoidal":
            h = h + sinusoidal_embedding(position_ids, cfg.hidden_size, h.dtype)
        if cfg.embed_layernorm:
            h = self.norm(h)
        return dropout(h, cfg.hidden_dropout, self.training, self.rng, "replicated")

    @property
    def weight(self) -> torch.Tensor:
        """The (vocab / TP, H) word-embedding shard, shared with the output head when tied."""
        return self.word_embeddings.weight
