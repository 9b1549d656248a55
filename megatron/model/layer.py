"""One transformer layer: pre-LN (optionally sandwich-LN) attention + MLP, or the GPT-J/NeoX
parallel residual x + attn(ln1(x)) + mlp(ln2(x))."""
from __future__ import annotations

from torch import nn

from megatron.model.attention import SelfAttention
from megatron.model.mlp import MLP
from megatron.model.norms import make_norm
from megatron.model.rng import DropoutRNG, dropout


class TransformerLayer(nn.Module):
    def __init__(self, cfg, layer_number: int, mp_config, rng: DropoutRNG, dtype):
        super().__init__()
        self.cfg, self.rng = cfg, rng
        self.input_norm = make_norm(cfg, dtype)
        self.attention = SelfAttention(cfg, layer_number, mp_config, rng)
        self.pre_mlp_norm = make_norm(cfg, dtype)
        self.mlp = MLP(cfg, mp_config)
        if cfg.sandwich_layernorm:  # normalise each sublayer's output before the residual add
            self.post_attention_norm = make_norm(cfg, dtype)
            self.post_mlp_norm = make_norm(cfg, dtype)

    def forward(self, h, position_ids, prefix_lengths=None, document_ids=None, block_mask=None):
        """h (B, T, H) -> (B, T, H). block_mask: the FlexAttention mask of these masks, when the
        caller built it once for all layers (else attention builds its own if it needs one)."""
        cfg = self.cfg
        attn = self.attention(self.input_norm(h), position_ids, prefix_lengths, document_ids,
                              block_mask)
        if cfg.sandwich_layernorm:
            attn = self.post_attention_norm(attn)
        attn = self._dropout(attn)
        if cfg.parallel_attention_mlp:
            mlp_out = self.mlp(self.pre_mlp_norm(h))
        else:
            h = h + attn
            mlp_out = self.mlp(self.pre_mlp_norm(h))
        if cfg.sandwich_layernorm:
            mlp_out = self.post_mlp_norm(mlp_out)
        mlp_out = self._dropout(mlp_out)
        if cfg.parallel_attention_mlp:
            return h + attn + mlp_out
        return h + mlp_out

    def _dropout(self, x):  # the residual stream is replicated across TP ranks
        return dropout(x, self.cfg.hidden_dropout, self.training, self.rng, "replicated")
