"""Clean stops: SIGTERM / SIGUSR1 (SLURM preemption: `#SBATCH --signal=USR1@120`) and
`--kill-switch-path` make every rank finish its step, save and exit with code 0."""
from __future__ import annotations

import os
import signal
from typing import Optional

import torch

from megatron.trainer.host_copy import MaxOverRanksLater


class StopRequest:
    """Records a stop signal in a handler; `requested()` agrees on it across all ranks."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, kill_switch_path: Optional[str] = None):
        self.kill_switch_path = kill_switch_path
        self.reason: Optional[str] = None
        self._previous = {}
        self._agreement: Optional[MaxOverRanksLater] = None
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        """True on every rank, at the same call, if any rank got a signal or sees the kill
        switch; then `reason` names it on every rank.

        Above one rank they agree through an all-reduce one call late: each call starts the
        all-reduce of this rank's state and reads the one the previous call started, which
        has finished with the step before it. Reading it at once would make the host wait for
        the step queued meanwhile, every step. So a stop takes effect one step later there."""
        if self.reason is None and self.kill_switch_path and os.path.exists(self.kill_switch_path):
            self.reason = f"kill switch {self.kill_switch_path}"
        if self._agreement is None:
            self._agreement = MaxOverRanksLater(device)
        agreed = int(self._agreement(self._code(self.reason)) or 0)
        if agreed and self.reason is None:
            self.reason = f"{self._name(agreed)} (received by another rank)"
        return bool(agreed)

    def _code(self, reason: Optional[str]) -> int:
        """0: none; 1 + the signal's index; a kill switch counts after the signals."""
        if reason is None:
            return 0
        names = [s.name for s in self.SIGNALS]
        return 1 + names.index(reason) if reason in names else 1 + len(names)

    def _name(self, code: int) -> str:
        names = [s.name for s in self.SIGNALS]
        return names[code - 1] if code <= len(names) else f"kill switch {self.kill_switch_path}"

    def restore(self) -> None:
        """Put the previous handlers back; after a stop, ignore further stop signals instead:
        the launcher may deliver the same signal to this rank late (srun signals tasks one by
        one), and the default action would kill a process that is exiting cleanly."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.reason else handler)
