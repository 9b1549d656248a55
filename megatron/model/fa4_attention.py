"""Causal attention through FlashAttention-4's kernels, on the packed QKV (`--attention-kernel fa4`).

FlashAttention-4 (Tri Dao's CuTe-DSL kernels for Hopper and Blackwell; tested: `pip install
flash-attn-4==4.0.0b36`, with quack-kernels 0.6.4 and nvidia-cutlass-dsl 4.6.2) is optional.
It is used here because torch's SDPA cannot do two things:

- its backward writes dq, dk and dv straight into the fused QKV layout (B, T, nh, 3, hs): with
  SDPA, autograd stacks three separate gradients into that layout, a copy of the whole QKV
  gradient in every layer;
- its Hopper kernels are faster than the cuDNN kernels SDPA picks on an H100: 1.05 against
  1.29-1.37 ms per layer (forward + backward, the 1.3B preset's shape, the stacking included;
  docs/benchmarks.md).

Both halves are torch custom ops, so torch.compile keeps the transformer block in one graph.
Scope: plain causal masks, no ALiBi, no attention dropout, bf16/fp16 (model/validate.py); any
TP (a rank attends over its own heads) and PP (tests/gpu/test_fa4_attention_gpu.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from megatron.model.hopper_kernels import unavailable_reason

TESTED_FA4 = "flash-attn-4==4.0.0b36"  # with quack-kernels==0.6.4, nvidia-cutlass-dsl 4.6.2


def fa4_unavailable_reason() -> Optional[str]:
    """Why FlashAttention-4 cannot run on this machine, or None when it can."""
    return unavailable_reason("flash_attn.cute.interface", TESTED_FA4)


@torch.library.custom_op("megatron::fa4_causal_fwd", mutates_args=())
def _fa4_fwd(qkv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv (B, T, nh, 3, hs) -> out (B, T, nh, hs), lse (B, nh, T) fp32."""
    from flash_attn.cute.interface import _flash_attn_fwd
    q, k, v = qkv.unbind(3)  # (B, T, nh, hs) strided views, no copies
    out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=True, return_lse=True)
    return out, lse


@_fa4_fwd.register_fake
def _(qkv, scale):
    B, T, nh, _, hs = qkv.shape
    return qkv.new_empty(B, T, nh, hs), qkv.new_empty(B, nh, T, dtype=torch.float32)


@torch.library.custom_op("megatron::fa4_causal_bwd", mutates_args=())
def _fa4_bwd(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
             scale: float) -> torch.Tensor:
    """dout (B, T, nh, hs) -> dqkv (B, T, nh, 3, hs), written in place by the kernel."""
    from flash_attn.cute.interface import _flash_attn_bwd
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    dq, dk, dv = dqkv.unbind(3)
    q, k, v = qkv.unbind(3)
    _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=scale, causal=True,
                    dq=dq, dk=dk, dv=dv)
    return dqkv


@_fa4_bwd.register_fake
def _(dout, qkv, out, lse, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    qkv, out, lse = ctx.saved_tensors
    return _fa4_bwd(dout.contiguous(), qkv, out, lse, ctx.scale), None


_fa4_fwd.register_autograd(_backward, setup_context=_setup_context)


def fa4_causal_attention(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal self-attention of the packed qkv (B, T, nh, 3, hs) -> (B, T, nh, hs)."""
    return _fa4_fwd(qkv, scale)[0]
