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

One launch updates a whole list of tensors (as torch's multi-tensor kernels do): each program
takes one BLOCK of one tensor, found in tables of tensor addresses and block numbers. A Triton
launch costs tens of microseconds of host time, so one launch per tensor made small models'
steps wait on the host.
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
    def _adamw_bf16(weights, grads, masters, exp_avgs, exp_avg_sqs, steps, numels,
                    block_tensor, block_index, scale_ptr, skip_ptr, lr, beta1, beta2, eps,
                    weight_decay, BLOCK: tl.constexpr):
        if tl.load(skip_ptr) != 0.0:
            return
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)  # which tensor this program updates
        offs = tl.load(block_index + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < tl.load(numels + t)
        weight = tl.load(weights + t).to(tl.pointer_type(tl.bfloat16))
        grad = tl.load(grads + t).to(tl.pointer_type(tl.bfloat16))
        master = tl.load(masters + t).to(tl.pointer_type(tl.float32))
        exp_avg = tl.load(exp_avgs + t).to(tl.pointer_type(tl.float32))
        exp_avg_sq = tl.load(exp_avg_sqs + t).to(tl.pointer_type(tl.float32))
        step = tl.load(tl.load(steps + t).to(tl.pointer_type(tl.float32)))
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


def _to_device(table: torch.Tensor, device) -> torch.Tensor:
    """A CPU table copied to `device` without a host sync (from pinned memory, which the
    caching host allocator keeps until the copy has run)."""
    return table.pin_memory().to(device, non_blocking=True)


def _addresses(tensors: list, device) -> torch.Tensor:
    """(N,) int64 on `device`: the tensors' data pointers."""
    return _to_device(torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64), device)


class TensorListTables:
    """What stays fixed for one list of tensors between steps: the addresses of the weights,
    masters, moments and step counts, each tensor's size, and which (tensor, block) each
    program takes. Only the gradients' addresses are new each step."""

    def __init__(self, weights: list, masters: list, exp_avgs: list, exp_avg_sqs: list,
                 steps: list):
        device = weights[0].device
        self.weights, self.masters = _addresses(weights, device), _addresses(masters, device)
        self.exp_avgs = _addresses(exp_avgs, device)
        self.exp_avg_sqs = _addresses(exp_avg_sqs, device)
        self.steps = _addresses(steps, device)
        # the tables hold addresses only: keep the tensors alive with them
        self._alive = (weights, masters, exp_avgs, exp_avg_sqs, steps)
        numels = [w.numel() for w in weights]
        blocks = torch.tensor([triton.cdiv(n, BLOCK) for n in numels])
        self.num_blocks = int(blocks.sum())
        self.numels = _to_device(torch.tensor(numels, dtype=torch.int64), device)
        self.block_tensor = _to_device(torch.repeat_interleave(
            torch.arange(len(numels), dtype=torch.int32), blocks), device)
        starts = torch.cumsum(blocks, 0) - blocks  # first program of each tensor
        self.block_index = _to_device((torch.arange(self.num_blocks) - torch.repeat_interleave(
            starts, blocks)).to(torch.int32), device)


def adamw_bf16_(tables: TensorListTables, grads: list, scale: torch.Tensor, skip: torch.Tensor,
                *, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float) -> None:
    """Update, in place and in one launch, the contiguous tensors of `tables` (bf16 weights,
    fp32 masters and moments) from their contiguous bf16 grads. Each tensor's 0-d fp32 step
    count is read after this step's increment; scale, skip: 0-d fp32 on the device."""
    if tables.num_blocks == 0:
        return
    grad_table = _addresses(grads, scale.device)
    _adamw_bf16[(tables.num_blocks,)](
        tables.weights, grad_table, tables.masters, tables.exp_avgs, tables.exp_avg_sqs,
        tables.steps, tables.numels, tables.block_tensor, tables.block_index, scale, skip,
        lr, beta1, beta2, eps, weight_decay, BLOCK=BLOCK, num_warps=NUM_WARPS)
    # the gradients must outlive the kernel: the caller frees them only after this launch,
    # and the caching allocator reuses their memory in stream order
