"""Read device scalars on the host later, without making the host wait now."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist


def to_host(values: dict) -> Callable[[], dict]:
    """Start copying {name: 0-d tensor} to the host; returns a function that waits for the copy
    (and so for the device work queued before it) and gives {name: float}. On CUDA the copy
    goes to pinned memory behind an event: nothing waits until the function is called."""
    names = list(values)
    stacked = torch.stack([values[n].detach().float().reshape(()) for n in names])
    if not stacked.is_cuda:
        return lambda: dict(zip(names, stacked.tolist()))
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def wait() -> dict:
        copied.synchronize()
        return dict(zip(names, host.tolist()))
    return wait


@dataclass
class DeviceMark:
    """A CUDA timing event and the anchor it is read against."""
    event: torch.cuda.Event
    anchor: torch.cuda.Event
    anchor_time: float  # perf_counter() when the device reached `anchor`

    def time(self) -> float:
        """perf_counter() time at which the device reached the event (it must have)."""
        return self.anchor_time + self.anchor.elapsed_time(self.event) / 1e3


class DeviceClock:
    """When the device reached a point of its queue, on the host's perf_counter() clock: not
    when the host looked, which in overlapped steps is up to a step later. Events are timed
    against an anchor event recorded at a synchronize (its host time known); the anchor is
    renewed every `reanchor_s` seconds, so host and device clock drift stays negligible."""

    def __init__(self, reanchor_s: float = 300.0):
        self.reanchor_s = reanchor_s
        self._anchor: Optional[torch.cuda.Event] = None
        self._anchor_time = 0.0

    def mark(self) -> DeviceMark:
        """A mark at this point of the current stream (a synchronize first if one is due)."""
        if self._anchor is None or time.perf_counter() - self._anchor_time > self.reanchor_s:
            anchor = torch.cuda.Event(enable_timing=True)
            anchor.record()
            anchor.synchronize()
            self._anchor, self._anchor_time = anchor, time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return DeviceMark(event, self._anchor, self._anchor_time)


class MaxOverRanksLater:
    """The max over all ranks of a number that each rank gives at every call, known one call
    later: the all-reduce runs on the device and reaches the host through pinned memory, so
    the host never waits for the work queued in between (a step). Reading it in the same call
    would wait for that. On one rank: the number itself, at once."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pending: Optional[Callable[[], dict]] = None

    def __call__(self, value: float) -> Optional[float]:
        """The previous call's max over ranks (None at the first call above one rank)."""
        if dist.get_world_size() == 1:
            return value
        previous = self._pending()["max"] if self._pending else None
        here = torch.full((), value, dtype=torch.float32, device=self.device)
        dist.all_reduce(here, op=dist.ReduceOp.MAX)
        self._pending = to_host({"max": here})
        return previous
