"""Where a step's time goes (--log-timers-to-tensorboard): data, forward, backward, optimizer.

    timer = PhaseTimer(sync=torch.cuda.is_available())
    with timer("forward"):
        loss = model(batch)
    timer.pop()   # {"forward": seconds, ...} accumulated since the last pop

With `sync`, each phase waits for the GPU before and after, so the split is real but the step
gets slightly slower: it is opt-in. DeepSpeed's gradient all-reduce runs inside the backward
of the last micro-batch (ZeRO-1/2) and its parameter all-gather inside the optimizer step, so
communication shows up in those two phases.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class NullTimer:
    """The default: phases cost nothing and nothing is recorded."""

    @contextlib.contextmanager
    def __call__(self, phase: str):
        yield

    def pop(self) -> dict:
        return {}


class PhaseTimer(NullTimer):
    def __init__(self, sync: bool):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - t0

    def pop(self) -> dict:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out
