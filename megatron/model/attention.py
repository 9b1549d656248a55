"""Tensor-parallel self-attention: fused per-head QKV (column parallel) -> kernel -> out proj (row parallel).

The fused QKV weight's rows are laid out per head, (nh, 3, hs), so a contiguous TP slice of
the output dimension holds whole heads (q, k and v of the same heads).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import nn

from megatron.model import kernels, masks
from megatron.model.init import normal_init, scaled_normal_init
from megatron.model.positional import (alibi_bias, alibi_slopes, apply_rotary, rotary_cos_sin,
                                       rotary_dim)
from megatron.model.rng import DropoutRNG, dropout


class SelfAttention(nn.Module):
    def __init__(self, cfg, layer_number: int, mp_config, rng: DropoutRNG):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.cfg, self.rng = cfg, rng
        self.layer_number = layer_number  # 1-based, for query-key layer scaling
        self.num_heads = cfg.num_attention_heads // tp  # heads on this TP rank
        self.head_dim = cfg.head_dim
        H = cfg.hidden_size
        tp_group = parallel_state.get_tensor_model_parallel_group()
        self.qkv = ColumnParallelLinear(H, 3 * H, config=mp_config, tp_group=tp_group,
                                        bias=cfg.add_bias_linear,
                                        init_method=normal_init(cfg.init_method_std),
                                        gather_output=False)
        self.dense = RowParallelLinear(H, H, config=mp_config, tp_group=tp_group,
                                       bias=cfg.add_bias_linear,
                                       init_method=scaled_normal_init(cfg.init_method_std,
                                                                      cfg.num_layers),
                                       input_is_parallel=True, skip_bias_add=False)
        if cfg.position_embedding_type == "alibi":  # slopes of this rank's heads only
            slopes = alibi_slopes(cfg.num_attention_heads)
            self.register_buffer("alibi_slopes", slopes[tp_rank * self.num_heads:
                                                        (tp_rank + 1) * self.num_heads],
                                 persistent=False)
        else:
            self.alibi_slopes = None

    def forward(self, x, position_ids, prefix_lengths=None, document_ids=None):
        """x (B, T, H), position_ids (B, T) -> (B, T, H), replicated across TP ranks."""
        cfg = self.cfg
        B, T, _ = x.shape
        qkv, _ = self.qkv(x)  # (B, T, nh * 3 * hs)
        q, k, v = qkv.view(B, T, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)  # (B, nh, T, hs)
        if cfg.position_embedding_type == "rope":
            cos, sin = rotary_cos_sin(position_ids, rotary_dim(self.head_dim, cfg.rotary_percent),
                                      cfg.rotary_base)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = self._attend(q, k, v, position_ids, prefix_lengths, document_ids)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        out, _ = self.dense(y)  # (B, T, H), all-reduced over TP
        return out

    def _attend(self, q, k, v, position_ids, prefix_lengths, document_ids):
        cfg = self.cfg
        p = cfg.attention_dropout if self.training else 0.0
        plain = masks.is_plain_causal(prefix_lengths, document_ids)
        has_alibi = self.alibi_slopes is not None
        kernel = kernels.choose_kernel(cfg.attention_kernel, device_type=q.device.type,
                                       plain_causal=plain, has_alibi=has_alibi,
                                       dropout_active=p > 0)
        scale = 1.0 / math.sqrt(self.head_dim)
        T = q.shape[-2]
        if kernel == "flex":
            if p > 0:
                raise ValueError("--attention-kernel flex does not support --attention-dropout > 0")
            bm = masks.block_mask(T, q.device, prefix_lengths, document_ids)
            return kernels.flex_attention(q, k, v, block_mask=bm, scale=scale,
                                          alibi_slopes=self.alibi_slopes, position_ids=position_ids)
        mask = None if plain else masks.dense_mask(T, q.device, prefix_lengths, document_ids)
        bias = alibi_bias(self.alibi_slopes, position_ids) if has_alibi else None
        if kernel == "sdpa":
            with self.rng.fork("sharded"):  # SDPA's dropout draws from the default generator
                return kernels.sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale,
                                              dropout_p=p)
        # Only eager honours softmax_in_fp32 / query-key layer scaling: the fused SDPA and flex
        # kernels already accumulate the softmax in fp32, and the scaling does not change values.
        layer_scale = float(self.layer_number) if cfg.apply_query_key_layer_scaling else 1.0
        return kernels.eager_attention(
            q, k, v, mask=mask, bias=bias, scale=scale, layer_scale=layer_scale,
            softmax_in_fp32=cfg.attention_softmax_in_fp32 or cfg.apply_query_key_layer_scaling,
            dropout=lambda probs: dropout(probs, p, self.training, self.rng, "sharded"))
