"""Loss-spike detection: a step whose loss is more than `threshold` standard deviations above
the mean of the last `window` (non-spike) losses.

What to do about a spike is the caller's choice (`--loss-spike-action`): log it and go on; skip
the batch (the loop checks the global batch's loss before the update and the engine drops it);
or stop, so the run can be restarted from the last checkpoint with --skip-train-iteration-range
over the offending batches (what BLOOM-176B's operators did by hand).
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Spike:
    iteration: int
    loss: float
    mean: float
    std: float

    def describe(self) -> str:
        return (f"loss spike at iteration {self.iteration}: loss {self.loss:.4f} > running mean "
                f"{self.mean:.4f} + {(self.loss - self.mean) / max(self.std, 1e-12):.1f} std "
                f"({self.std:.4f})")


class SpikeDetector:
    def __init__(self, threshold: float, window: int = 100, min_history: int = 10):
        self.threshold, self.min_history = threshold, min_history
        self.history: collections.deque = collections.deque(maxlen=window)

    def check(self, iteration: int, loss: float) -> Optional[Spike]:
        """The spike this loss is, or None; non-finite losses are left to the NaN handling."""
        if not math.isfinite(loss):
            return None
        if len(self.history) >= self.min_history:
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (n - 1))
            if loss > mean + self.threshold * std:
                return Spike(iteration, loss, mean, std)  # kept out of the running statistics
        self.history.append(loss)
        return None
