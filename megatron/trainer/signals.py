"""Clean stops: SIGTERM / SIGUSR1 (SLURM preemption: `#SBATCH --signal=USR1@120`) and
`--kill-switch-path` make every rank finish its step, save and exit with code 0."""
from __future__ import annotations

import os
import signal
from typing import Optional

import torch
import torch.distributed as dist


class StopRequest:
    """Records a stop signal in a handler; `requested()` agrees on it across all ranks."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, kill_switch_path: Optional[str] = None):
        self.kill_switch_path = kill_switch_path
        self.reason: Optional[str] = None
        self._previous = {}
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        """True on every rank if any rank got a signal or sees the kill switch (a collective)."""
        if self.reason is None and self.kill_switch_path and os.path.exists(self.kill_switch_path):
            self.reason = f"kill switch {self.kill_switch_path}"
        flag = torch.tensor([1 if self.reason else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.reason is None:
            self.reason = "another rank's stop request"
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
