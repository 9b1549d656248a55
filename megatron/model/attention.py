"""Tensor-parallel self-attention: fused per-head QKV (column parallel) -> kernel -> out proj (row parallel).

The fused QKV weight's rows are laid out per head, (nh, 3, hs), so a contiguous TP slice of
the output dimension holds whole heads (q, k and v of the same heads).

Incremental decoding (inference only): setting `attention.kv_cache = KVCache()` makes forward
append this call's keys/values to the cache and attend over all cached positions (causal by
position id, ALiBi from the positions); `kv_cache = None` (the default) is the training path.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.model.linear import ColumnLinear, RowLinear
from torch import nn

from megatron.model import kernels, masks
from megatron.model.init import normal_init, scaled_normal_init
from megatron.model.positional import (alibi_bias, alibi_slopes, apply_rotary, rotary_cos_sin,
                                       rotary_dim)
from megatron.model.rng import DropoutRNG, checkpointed, dropout


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
        self.qkv = ColumnLinear(H, 3 * H, config=mp_config, tp_group=tp_group,
                                        bias=cfg.add_bias_linear,
                                        init_method=normal_init(cfg.init_method_std),
                                        gather_output=False)
        self.dense = RowLinear(H, H, config=mp_config, tp_group=tp_group,
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
        self.kv_cache: Optional[KVCache] = None  # set only for incremental decoding
        # selective recomputation (--recompute-granularity selective): the attention core's
        # activations (scores, probabilities, dropout mask) are recomputed in backward
        self.recompute_core = False

    def forward(self, x, position_ids, prefix_lengths=None, document_ids=None, block_mask=None,
                rotary=None):
        """x (B, T, H), position_ids (B, T) -> (B, T, H), replicated across TP ranks.
        rotary: (cos, sin) of these positions (GPTModel makes them once for all layers)."""
        cfg = self.cfg
        B, T, _ = x.shape
        qkv, _ = self.qkv(x)  # (B, T, nh * 3 * hs)
        qkv = qkv.view(B, T, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.unbind(3)  # (B, T, nh, hs)
        fa4 = cfg.attention_kernel == "fa4" and self.kv_cache is None  # on the packed qkv
        if cfg.position_embedding_type == "rope":
            cos, sin = rotary if rotary is not None else rotary_cos_sin(
                position_ids, rotary_dim(self.head_dim, cfg.rotary_percent), cfg.rotary_base)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if fa4:
                qkv = torch.stack([q, k, v], dim=3)  # (B, T, nh, 3, hs)
        if fa4:
            y = self._attend_fa4(qkv, prefix_lengths, document_ids)  # (B, T, nh, hs)
            out, _ = self.dense(y.reshape(B, T, self.num_heads * self.head_dim))
            return out
        # (B, nh, T, hs) views of token-major memory: the kernels' outputs keep q's layout, so
        # y's transpose back to (B, T, H) below, and its gradient, need no copies
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.kv_cache is not None:
            y = self._attend_cached(q, k, v, position_ids, prefix_lengths, document_ids)
        elif self.recompute_core and self.training and torch.is_grad_enabled():
            y = checkpointed(self._attend, self.rng, q, k, v, position_ids, prefix_lengths,
                             document_ids, block_mask)  # (B, nh, T, hs)
        else:
            y = self._attend(q, k, v, position_ids, prefix_lengths, document_ids,
                             block_mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        out, _ = self.dense(y)  # (B, T, H), all-reduced over TP
        return out

    def _attend_fa4(self, qkv, prefix_lengths, document_ids):
        """FlashAttention-4 on the packed qkv (B, T, nh, 3, hs) -> (B, T, nh, hs): its backward
        writes the gradient in that layout (fa4_attention.py). Plain causal only."""
        from megatron.model.fa4_attention import fa4_causal_attention
        if not masks.is_plain_causal(prefix_lengths, document_ids):
            raise ValueError("--attention-kernel fa4 runs plain causal masks only (no --prefix-lm "
                             "or --reset-attention-mask)")
        scale = 1.0 / math.sqrt(self.head_dim)
        if self.recompute_core and self.training and torch.is_grad_enabled():
            return checkpointed(fa4_causal_attention, self.rng, qkv, scale)
        return fa4_causal_attention(qkv, scale)

    def _attend_cached(self, q, k, v, position_ids, prefix_lengths, document_ids):
        """Attend over the cache plus this call's tokens: key j is visible to query i when
        pos_j <= pos_i. Eager math with the softmax in fp32; no dropout."""
        if prefix_lengths is not None or document_ids is not None:
            raise ValueError("the KV cache supports plain causal attention only")
        k, v, k_pos = self.kv_cache.append(k, v, position_ids)  # (B, nh, S, hs), (B, S)
        scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)
        dist = position_ids[:, None, :, None] - k_pos[:, None, None, :]  # (B, 1, T, S)
        if self.alibi_slopes is not None:
            scores = scores - self.alibi_slopes.float()[None, :, None, None] * dist.abs()
        scores = scores.masked_fill(dist < 0, float("-inf"))  # (B, nh, T, S)
        return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)  # (B, nh, T, hs)

    def kernel(self, device_type: str, prefix_lengths=None, document_ids=None) -> str:
        """The attention kernel this layer uses for such a batch: "eager", "sdpa", "flex" or
        "fa4"."""
        return kernels.choose_kernel(
            self.cfg.attention_kernel, device_type=device_type,
            plain_causal=masks.is_plain_causal(prefix_lengths, document_ids),
            has_alibi=self.alibi_slopes is not None,
            dropout_active=self.training and self.cfg.attention_dropout > 0)

    def _attend(self, q, k, v, position_ids, prefix_lengths, document_ids, block_mask=None):
        cfg = self.cfg
        p = cfg.attention_dropout if self.training else 0.0
        plain = masks.is_plain_causal(prefix_lengths, document_ids)
        has_alibi = self.alibi_slopes is not None
        kernel = self.kernel(q.device.type, prefix_lengths, document_ids)
        scale = 1.0 / math.sqrt(self.head_dim)
        T = q.shape[-2]
        if kernel == "flex":
            if p > 0:
                raise ValueError("--attention-kernel flex does not support --attention-dropout > 0")
            bm = block_mask if block_mask is not None else masks.block_mask(
                T, q.device, prefix_lengths, document_ids)
            return kernels.flex_attention(q, k, v, block_mask=bm, scale=scale,
                                          alibi_slopes=self.alibi_slopes, position_ids=position_ids)
        mask = None if plain else masks.dense_mask(T, q.device, prefix_lengths, document_ids)
        bias = alibi_bias(self.alibi_slopes, position_ids) if has_alibi else None
        if kernel == "sdpa":
            # SDPA's dropout draws from the default generator: give it the sharded stream (and
            # touch no RNG state without dropout, which also keeps torch.compile graphs whole)
            with self.rng.fork("sharded") if p > 0 else contextlib.nullcontext():
                return kernels.sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale,
                                              dropout_p=p, backend=cfg.sdpa_backend)
        # Only eager honours softmax_in_fp32 / query-key layer scaling: the fused SDPA and flex
        # kernels already accumulate the softmax in fp32, and the scaling does not change values.
        layer_scale = float(self.layer_number) if cfg.apply_query_key_layer_scaling else 1.0
        return kernels.eager_attention(
            q, k, v, mask=mask, bias=bias, scale=scale, layer_scale=layer_scale,
            softmax_in_fp32=cfg.attention_softmax_in_fp32 or cfg.apply_query_key_layer_scaling,
            dropout=lambda probs: dropout(probs, p, self.training, self.rng, "sharded"))


class KVCache:
    """One layer's keys and values (this rank's heads) of the tokens decoded so far."""

    def __init__(self):
        self.k = self.v = self.positions = None  # (B, nh, S, hs), (B, nh, S, hs), (B, S)

    def append(self, k, v, position_ids):
        """k, v (B, nh, T, hs), position_ids (B, T) -> all cached (k, v, positions)."""
        if self.k is None:
            self.k, self.v, self.positions = k, v, position_ids
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
            self.positions = torch.cat([self.positions, position_ids], dim=1)
        return self.k, self.v, self.positions

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]
