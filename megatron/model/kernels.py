"""Core attention kernels, interchangeable: eager (reference), torch SDPA, FlexAttention.
("fa4", FlashAttention-4 on the packed QKV, lives in fa4_attention.py: it takes other inputs.)

All take q, k, v (B, nh, T, hs) and return (B, nh, T, hs). `mask` is masks.dense_mask's bool
tensor (None = plain causal), `bias` an additive (B, nh, T, T) ALiBi bias or None.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

KERNELS = ("auto", "eager", "sdpa", "flex", "fa4")
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


def choose_kernel(requested: str, *, device_type: str, plain_causal: bool, has_alibi: bool,
                  dropout_active: bool) -> str:
    """Resolve "auto": SDPA on CPU (FlexAttention has no fused CPU kernel without compiling);
    on CUDA SDPA's fused causal kernel for plain causal, FlexAttention for other masks/ALiBi,
    except with attention dropout, which FlexAttention does not implement."""
    if requested != "auto":
        return requested
    if device_type != "cuda" or (plain_causal and not has_alibi) or dropout_active:
        return "sdpa"
    return "flex"


def eager_attention(q, k, v, *, mask: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    scale: float, softmax_in_fp32: bool, layer_scale: float = 1.0,
                    dropout=lambda p: p):
    """Reference math. layer_scale > 1 is Megatron's query-key layer scaling: scores are divided
    by it before the (fp32) softmax input is formed and multiplied back in fp32, the same value
    with less fp16 overflow."""
    T = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)) * (scale / layer_scale)  # (B, nh, T, T)
    if softmax_in_fp32 or layer_scale != 1.0:
        scores = scores.float()
    scores = scores * layer_scale
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    probs = dropout(probs)
    return torch.matmul(probs, v)  # (B, nh, T, hs)


def _sdpa_priority(backend: str):
    """torch SDPA backends in the order to try them: `backend` first (a kernel that cannot take
    the inputs, e.g. cuDNN in fp32, falls through to the next), or None for torch's own order."""
    from torch.nn.attention import SDPBackend
    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if backend == "auto":
        return None
    return [order[backend]] + [b for name, b in order.items() if name != backend]


def sdpa_attention(q, k, v, *, mask: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   scale: float, dropout_p: float = 0.0, backend: str = "auto"):
    """torch SDPA: is_causal for plain causal, else a bool mask, or an additive one with ALiBi.
    backend (on CUDA): the SDPA kernel to prefer (--sdpa-backend), "auto" = torch's order."""
    priority = _sdpa_priority(backend) if q.is_cuda else None
    if priority is None:
        return _sdpa(q, k, v, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p)
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(priority, set_priority=True):  # traced by torch.compile without a break
        return _sdpa(q, k, v, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p)


def _sdpa(q, k, v, *, mask, bias, scale, dropout_p):
    if mask is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale)
    if mask is None:
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[None, None]
    attn_mask = mask
    if bias is not None:
        attn_mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))  # (B, nh, T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          scale=scale)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q, k, v, *, block_mask, scale: float, alibi_slopes: Optional[torch.Tensor] = None,
                   position_ids: Optional[torch.Tensor] = None):
    """FlexAttention with a BlockMask (masks.block_mask) and ALiBi as a score_mod.

    Compiled on CUDA; on CPU it runs torch's unfused reference path (correct, not fast)."""
    from torch.nn.attention.flex_attention import flex_attention as flex
    score_mod = None
    if alibi_slopes is not None:
        slopes, pos = alibi_slopes.float(), position_ids.float()

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (pos[b, q_idx] - pos[b, kv_idx]).abs()
    if torch.compiler.is_compiling():  # inside a compiled layer (--torch-compile): traced there
        if not q.is_cuda:
            # Same (contiguous) layout for all three: with rotated (dense) q, k and a strided
            # view for v, inductor's CPU flex_attention returned wrong values (torch 2.13).
            # On CUDA the strided views go in as they are (tests/gpu/test_kernels_gpu.py).
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    if q.is_cuda:
        return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    with warnings.catch_warnings():  # the "called without torch.compile" notice, expected here
        warnings.simplefilter("ignore", UserWarning)
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
