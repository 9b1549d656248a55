"""One-pass AdamW for bf16 weights with fp32 masters, on CUDA with Triton (used by
megatron/trainer/master_adamw.py when every gradient is still a bf16 `.grad`: one micro-batch
per step and DP 1).

Why a kernel of our own: torch's fused AdamW needs the gradients in the masters' dtype, so
each bf16 gradient would first be copied to fp32 and each updated master copied back to the
bf16 weight: two more passes over 6 bytes per parameter. Here one pass reads the bf16 gradient,
the fp32 master and moments, and writes master, moments and the bf16 weight (28 bytes per
parameter, as torch's fp32 AdamW alone). The math is torch's AdamW (decoupled weight decay,
bias corrections from the step count); `scale` divides the gradients (clipping) and a nonzero
`skip` leaves everything untouched, both read on the device.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: master_adamw.py uses torch's fused AdamW
    triton = None

# Elements per program, 4 warps: 2.91 TB/s over the 1.3B model's tensors on an H100, against
# 2.56 TB/s at 4096 (docs/benchmarks.md); torch's fp32 copy reaches 3.02 TB/s there.
BLOCK, NUM_WARPS = 1024, 4


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    @triton.jit
    def _adamw_bf16(weight, grad, master, exp_avg, exp_avg_sq, numel, step_ptr, scale_ptr,
                    skip_ptr, lr, beta1, beta2, eps, weight_decay, BLOCK: tl.constexpr):
        if tl.load(skip_ptr) != 0.0:
            return
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        step = tl.load(step_ptr)
        g = tl.load(grad + offs, mask=mask).to(tl.float32) / tl.load(scale_ptr)
        p = tl.load(master + offs, mask=mask)
        m = tl.load(exp_avg + offs, mask=mask)
        v = tl.load(exp_avg_sq + offs, mask=mask)
        p = p * (1.0 - lr * weight_decay)
        m = m + (1.0 - beta1) * (g - m)  # torch's lerp
        v = beta2 * v + (1.0 - beta2) * g * g
        bias1 = 1.0 - tl.exp(step * tl.log(beta1))
        bias2_sqrt = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2)))
        p = p - (lr / bias1) * m / (tl.sqrt(v) / bias2_sqrt + eps)
        tl.store(master + offs, p, mask=mask)
        tl.store(exp_avg + offs, m, mask=mask)
        tl.store(exp_avg_sq + offs, v, mask=mask)
        tl.store(weight + offs, p.to(tl.bfloat16), mask=mask)


def adamw_bf16_(weights: list, grads: list, masters: list, exp_avgs: list, exp_avg_sqs: list,
                steps: list, scale: torch.Tensor, skip: torch.Tensor, *, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Update, in place, contiguous tensors: bf16 weights and grads, fp32 masters and moments.
    steps: each tensor's 0-d fp32 step count after this step's increment; scale, skip: 0-d
    fp32 on the device."""
    for w, g, p, m, v, step in zip(weights, grads, masters, exp_avgs, exp_avg_sqs, steps):
        n = p.numel()
        _adamw_bf16[(triton.cdiv(n, BLOCK),)](w, g, p, m, v, n, step, scale, skip, lr, beta1,
                                              beta2, eps, weight_decay, BLOCK=BLOCK,
                                              num_warps=NUM_WARPS)
