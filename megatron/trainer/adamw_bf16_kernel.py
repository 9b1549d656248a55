"""One-pass AdamW for bf16 weights with fp32 masters, on CUDA with Triton (used by
megatron/trainer/master_adamw.py), from bf16 gradients (one micro-batch per step at DP 1) or
fp32 ones (accumulated over micro-batches, or all-reduced over DP ranks).

Why a kernel of our own: torch's fused AdamW needs the gradients in the masters' dtype and
updates only the masters, so each bf16 gradient would first be copied to fp32 and each updated
master copied back to the bf16 weight: more passes over memory. Here one pass reads the
gradient, the fp32 master and moments, and writes master, moments and the bf16 weight (28
bytes per parameter from a bf16 gradient, as torch's fp32 AdamW alone). The math is torch's
AdamW (decoupled weight decay, bias corrections from the step count); `scale` divides the
gradients (clipping, the DP mean) and a nonzero `skip` leaves everything untouched, both read
on the device.

Launches: a Triton launch costs tens of microseconds of host time, so small tensors share one
launch (each program finds its tensor in tables of addresses, as torch's multi-tensor kernels
do), and each large tensor gets its own (pointers passed as arguments are known to be aligned,
which makes its loads wider: on an H100 the 1.3B model's large tensors take 12.7 ms this way
and 13.4-14.3 ms through the tables).
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
BLOCKS_PER_CHUNK = 2  # blocks per program of the shared launch (the table lookups serve both)
OWN_LAUNCH_MIN_NUMEL = 4 * 2**20  # about as long on the GPU as a launch on the host


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    @triton.jit
    def _update(weight, grad, master, exp_avg, exp_avg_sq, offs, mask, step, scale, lr, beta1,
                beta2, eps, weight_decay):
        g = tl.load(grad + offs, mask=mask).to(tl.float32) / scale
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

    @triton.jit
    def _adamw_bf16_tensor(weight, grad, master, exp_avg, exp_avg_sq, numel, step_ptr,
                           scale_ptr, skip_ptr, lr, beta1, beta2, eps, weight_decay,
                           BLOCK: tl.constexpr):
        if tl.load(skip_ptr) != 0.0:
            return
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        _update(weight, grad, master, exp_avg, exp_avg_sq, offs, offs < numel,
                tl.load(step_ptr), tl.load(scale_ptr), lr, beta1, beta2, eps, weight_decay)

    @triton.jit
    def _adamw_bf16_list(weights, grads, masters, exp_avgs, exp_avg_sqs, steps, numels,
                         chunk_tensor, chunk_index, scale_ptr, skip_ptr, lr, beta1, beta2, eps,
                         weight_decay, BLOCK: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr,
                         GRAD_FP32: tl.constexpr):
        if tl.load(skip_ptr) != 0.0:
            return
        pid = tl.program_id(0)
        t = tl.load(chunk_tensor + pid)  # which tensor this program updates
        first = tl.load(chunk_index + pid).to(tl.int64) * (BLOCK * BLOCKS_PER_CHUNK)
        numel = tl.load(numels + t)
        weight = tl.load(weights + t).to(tl.pointer_type(tl.bfloat16))
        grad = tl.load(grads + t).to(tl.pointer_type(tl.float32 if GRAD_FP32 else tl.bfloat16))
        master = tl.load(masters + t).to(tl.pointer_type(tl.float32))
        exp_avg = tl.load(exp_avgs + t).to(tl.pointer_type(tl.float32))
        exp_avg_sq = tl.load(exp_avg_sqs + t).to(tl.pointer_type(tl.float32))
        step = tl.load(tl.load(steps + t).to(tl.pointer_type(tl.float32)))
        scale = tl.load(scale_ptr)
        for b in range(BLOCKS_PER_CHUNK):
            offs = first + b * BLOCK + tl.arange(0, BLOCK)
            _update(weight, grad, master, exp_avg, exp_avg_sq, offs, offs < numel, step,
                    scale, lr, beta1, beta2, eps, weight_decay)


def _to_device(table: torch.Tensor, device) -> torch.Tensor:
    """A CPU table copied to `device` without a host sync (from pinned memory, which the
    caching host allocator keeps until the copy has run)."""
    return table.pin_memory().to(device, non_blocking=True)


def _addresses(tensors: list, device) -> torch.Tensor:
    """(N,) int64 on `device`: the tensors' data pointers."""
    return _to_device(torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64), device)


class AdamWLaunches:
    """What stays fixed for one list of tensors between steps: which tensors get their own
    launch; for the others, the addresses of the weights, masters, moments and step counts,
    their sizes, and which chunk of which tensor each program of the shared launch takes.
    Only the gradients' addresses are new each step."""

    def __init__(self, weights: list, masters: list, exp_avgs: list, exp_avg_sqs: list,
                 steps: list):
        device = weights[0].device
        columns = list(zip(weights, masters, exp_avgs, exp_avg_sqs, steps))
        self.own = [i for i, w in enumerate(weights) if w.numel() >= OWN_LAUNCH_MIN_NUMEL]
        self.own_tensors = [columns[i] for i in self.own]
        self.shared = [i for i, w in enumerate(weights) if w.numel() < OWN_LAUNCH_MIN_NUMEL]
        self.num_chunks = 0
        if not self.shared:
            return
        w, p, m, v, s = (list(c) for c in zip(*(columns[i] for i in self.shared)))
        self.weights, self.masters = _addresses(w, device), _addresses(p, device)
        self.exp_avgs, self.exp_avg_sqs = _addresses(m, device), _addresses(v, device)
        self.steps = _addresses(s, device)
        self._alive = (w, p, m, v, s)  # the tables hold addresses only
        numels = [t.numel() for t in w]
        chunks = torch.tensor([triton.cdiv(n, BLOCK * BLOCKS_PER_CHUNK) for n in numels])
        self.num_chunks = int(chunks.sum())
        self.numels = _to_device(torch.tensor(numels, dtype=torch.int64), device)
        self.chunk_tensor = _to_device(torch.repeat_interleave(
            torch.arange(len(numels), dtype=torch.int32), chunks), device)
        starts = torch.cumsum(chunks, 0) - chunks  # first program of each tensor
        self.chunk_index = _to_device((torch.arange(self.num_chunks) - torch.repeat_interleave(
            starts, chunks)).to(torch.int32), device)


def adamw_bf16_(launches: AdamWLaunches, grads: list, scale: torch.Tensor, skip: torch.Tensor,
                *, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float) -> None:
    """Update, in place, the contiguous tensors of `launches` (bf16 weights, fp32 masters and
    moments) from their contiguous grads (same order; all bf16 or all fp32). Each tensor's
    0-d fp32 step count is read after this step's increment; scale, skip: 0-d fp32 on the
    device. The gradients may be freed after the call (the caching allocator reuses memory in
    stream order)."""
    hyper = (lr, beta1, beta2, eps, weight_decay)
    for i, (w, p, m, v, step) in zip(launches.own, launches.own_tensors):
        _adamw_bf16_tensor[(triton.cdiv(w.numel(), BLOCK),)](
            w, grads[i], p, m, v, w.numel(), step, scale, skip, *hyper, BLOCK=BLOCK,
            num_warps=NUM_WARPS)
    if launches.num_chunks:
        shared = [grads[i] for i in launches.shared]
        grad_fp32 = shared[0].dtype == torch.float32
        if any((g.dtype == torch.float32) != grad_fp32 for g in shared):
            raise ValueError("adamw_bf16_: the gradients of one call must share a dtype")
        grad_table = _addresses(shared, scale.device)
        _adamw_bf16_list[(launches.num_chunks,)](
            launches.weights, grad_table, launches.masters, launches.exp_avgs,
            launches.exp_avg_sqs, launches.steps, launches.numels, launches.chunk_tensor,
            launches.chunk_index, scale, skip, *hyper, BLOCK=BLOCK,
            BLOCKS_PER_CHUNK=BLOCKS_PER_CHUNK, GRAD_FP32=grad_fp32, num_warps=NUM_WARPS)
