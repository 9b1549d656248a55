"""Data-parallel gradient all-reduce overlapped with the backward, for --bf16-optimizer local
at DP > 1 (megatron/trainer/master_adamw.py).

Why our own: DeepSpeed all-reduces a client optimizer's gradients at ZeRO stage 0 only after the
whole backward (flatten, all-reduce, copy back), so none of it overlaps compute: on two H100s
the 1.3B model's DP 2 step took 292 ms against 262 ms on one GPU (docs/benchmarks.md). torch's
DDP would overlap it, but DeepSpeed's engine owns the model.

Each parameter's `main_grad` (Megatron-LM's name) is a view into a flat bucket of about
BUCKET_NUMEL elements in the communication dtype; buckets follow the parameters in reverse, the
order the backward produces their gradients. A hook takes each bf16 `.grad` as soon as it is
accumulated and frees it. Micro-batches before a step's last are summed in fp32 (in main_grad
itself for fp32 communication, else in a separate fp32 buffer); in the last one's backward the
gradient (plus that sum) is written into the bucket, and buckets are all-reduced (summed,
asynchronously) while the backward goes on, each once all its parameters have their gradient
and always in bucket order, so every rank issues the same collectives in the same order.
`finish` reduces the rest and waits for all. The optimizer divides by the DP size. A parameter
that got no gradient on this rank in the step counts as zero (as in torch's DDP): every rank
updates it the same way.

The communication dtype is DeepSpeed's `communication_data_type`: bf16 by default for bf16
runs, as in DeepSpeed (half the bytes of fp32; each rank's gradient and the sum are rounded to
bf16), or fp32 (Megatron-LM's choice for bf16).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

BUCKET_NUMEL = 40_000_000  # elements per bucket (Megatron-LM's DDP default): about one 1.3B layer
ALIGN = 64  # each main_grad starts at a multiple of 64 elements: aligned, wide loads later


class _Bucket:
    def __init__(self, params: list, dtype: torch.dtype, device):
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() // ALIGN) * ALIGN
        self.buffer = torch.empty(total, dtype=dtype, device=device)
        for p, offset in zip(params, offsets):
            p.main_grad = self.buffer[offset:offset + p.numel()].view(p.shape)
        self.params = params
        self.ready: set = set()  # ids of its parameters done in this step's last backward
        self.work = None  # the all-reduce in flight

    @property
    def complete(self) -> bool:
        return len(self.ready) == len(self.params)


class OverlappedGradReducer:
    def __init__(self, params: list, group, dtype: torch.dtype = torch.float32,
                 bucket_numel: Optional[int] = None):
        """params: the optimizer's parameters, in model order; group: the data-parallel group;
        dtype: of the all-reduce (fp32 or bf16); bucket_numel: default BUCKET_NUMEL."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"gradient all-reduce in {dtype}: use fp32 or bf16")
        bucket_numel = bucket_numel or BUCKET_NUMEL
        self.group, self.dtype = group, dtype
        self.buckets: list[_Bucket] = []
        current, size = [], 0
        for p in reversed(params):
            if current and size + p.numel() > bucket_numel:
                self.buckets.append(_Bucket(current, dtype, p.device))
                current, size = [], 0
            current.append(p)
            size += p.numel()
        if current:
            self.buckets.append(_Bucket(current, dtype, current[0].device))
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._sums: dict = {}  # id(p) -> fp32 sum of earlier micro-batches (bf16 communication)
        self.seen: set = set()  # ids of parameters with a gradient taken in this step
        self.last_backward = False  # the step's last micro-batch: reduce during its backward
        self.finished = False
        self.next_bucket = 0  # the first bucket not yet all-reduced in this step
        # this step's buckets all-reduced while the backward ran, and buckets complete while an
        # earlier one was not (they wait for it); then the same of the last finished step
        self.launched_in_backward = self.held_back = 0
        self.overlapped = self.waited = 0
        for p in params:
            p.register_post_accumulate_grad_hook(self._take)

    def before_backward(self, last: bool) -> None:
        """Say whether the next backward is the step's last (its buckets are then reduced)."""
        self.last_backward = last

    def _sum(self, p: torch.Tensor) -> torch.Tensor:
        """p's fp32 sum of the step's micro-batches before the last."""
        if self.dtype == torch.float32:
            return p.main_grad
        if id(p) not in self._sums:  # kept between steps: allocated once
            self._sums[id(p)] = torch.empty_like(p, dtype=torch.float32)
        return self._sums[id(p)]

    @torch.no_grad()
    def _take(self, p: torch.Tensor) -> None:
        if self.finished:  # a new step's first backward
            self.reset()
        earlier = id(p) in self.seen
        if self.last_backward:
            if not earlier:
                p.main_grad.copy_(p.grad)
            elif self.dtype == torch.float32:
                p.main_grad.add_(p.grad)
            else:
                torch.add(self._sum(p), p.grad, out=p.main_grad)  # fp32 add, rounded once
        elif earlier:
            self._sum(p).add_(p.grad)
        else:
            self._sum(p).copy_(p.grad)
        self.seen.add(id(p))
        p.grad = None
        if self.last_backward:
            bucket = self._bucket_of[id(p)]
            bucket.ready.add(id(p))
            if bucket.complete and bucket is not self._next():
                self.held_back += 1
            while self._next() is not None and self._next().complete:
                self._launch_next()
                self.launched_in_backward += 1

    def _next(self) -> Optional[_Bucket]:
        """The first bucket not yet all-reduced in this step, if any."""
        return self.buckets[self.next_bucket] if self.next_bucket < len(self.buckets) else None

    def _launch_next(self) -> None:
        bucket = self.buckets[self.next_bucket]
        bucket.work = dist.all_reduce(bucket.buffer, group=self.group, async_op=True)
        self.next_bucket += 1

    @torch.no_grad()
    def finish(self) -> None:
        """Reduce what the backward did not, and make the current stream wait for every
        all-reduce: then each main_grad holds the sum over DP ranks. Idempotent until reset."""
        if self.finished:
            return
        while self.next_bucket < len(self.buckets):
            bucket = self.buckets[self.next_bucket]
            for p in bucket.params:
                if id(p) not in self.seen:  # no gradient on this rank in this step
                    p.main_grad.zero_()
                elif id(p) not in bucket.ready and self.dtype != torch.float32:
                    p.main_grad.copy_(self._sum(p))  # none in the last micro-batch
            self._launch_next()
        self.overlapped, self.waited = self.launched_in_backward, self.held_back
        for bucket in self.buckets:
            bucket.work.wait()
        self.finished = True

    def reset(self) -> None:
        """Forget this step's gradients (after the optimizer step)."""
        self.seen.clear()
        for bucket in self.buckets:
            bucket.ready.clear()
            bucket.work = None
        self.next_bucket = 0
        self.finished = False
        self.launched_in_backward = self.held_back = 0
