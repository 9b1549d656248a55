"""One transformer layer: pre-LN (optionally sandwich-LN) attention + MLP, or the GPT-J/NeoX
parallel residual x + attn(ln1(x)) + mlp(ln2(x))."""
from __future__ import annotations

from torch import nn

from megatron.model import masks
from megatron.model.attention import SelfAttention
from megatron.model.mlp import MLP
from megatron.model.norms import make_norm
from megatron.model.positional import rotary_cos_sin, rotary_dim
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

    def forward(self, h, position_ids, prefix_lengths=None, document_ids=None, block_mask=None,
                rotary=None):
        """h (B, T, H) -> (B, T, H). block_mask, rotary: the FlexAttention mask of these masks
        and the rotary (cos, sin) tables of these positions, when the caller made them once for
        all layers (else attention makes its own where it needs them)."""
        cfg = self.cfg
        attn = self.attention(self.input_norm(h), position_ids, prefix_lengths, document_ids,
                              block_mask, rotary)
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


def shared_layer_inputs(layer: TransformerLayer, seq_len: int, position_ids, prefix_lengths,
                        document_ids, dtype, with_block_mask: bool = True):
    """(block_mask, rotary) that every layer of one forward can share, made once by the caller:
    the FlexAttention BlockMask where the layers use FlexAttention for these masks (building
    it costs about as much as a layer's attention), and the rotary (cos, sin) tables, each
    (B, T, 1, rot_dim) in the activations' dtype (inside a compiled layer, inductor fused their
    pow/cos/sin into the rotation of every q and k element, per head: 0.8 ms of each 13 ms
    layer of the 1.3B model on an H100). Either is None where the layers do not need it (the
    block mask also without `with_block_mask`: CUDA-graphed layers build their own). Made
    outside compiled layers, where torch.compile takes them as inputs."""
    cfg = layer.cfg
    device = position_ids.device
    block_mask = rotary = None
    if with_block_mask and layer.attention.kernel(device.type, prefix_lengths,
                                                  document_ids) == "flex":
        block_mask = masks.block_mask(seq_len, device, prefix_lengths, document_ids)
    if cfg.position_embedding_type == "rope":
        cos, sin = rotary_cos_sin(position_ids, rotary_dim(layer.attention.head_dim,
                                                           cfg.rotary_percent), cfg.rotary_base)
        rotary = (cos.to(dtype), sin.to(dtype))
    return block_mask, rotary
