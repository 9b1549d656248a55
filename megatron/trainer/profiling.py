"""Profile a window of training steps (Megatron-LM's --profile flags).

    --profile --profile-step-start 10 --profile-step-end 12 [--use-pytorch-profiler]

Steps start+1 .. end (1-based iterations) are profiled on the ranks in --profile-ranks.
Without --use-pytorch-profiler the window is marked with cudaProfilerStart/Stop, for
`nsys profile --capture-range=cudaProfilerApi` (as in Megatron-LM). With it, torch.profiler
records CPU and CUDA activity and writes, under --profile-dir (default: --tensorboard-dir,
else ./profile):
    trace_rank{R}.json     Chrome / Perfetto trace
    ops_rank{R}.txt        operators and kernels by total device time (CPU time off a GPU)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


class StepProfiler:
    def __init__(self, enabled: bool, start: int, end: int, ranks, rank: int,
                 use_pytorch: bool, directory: Optional[str], device_type: str):
        self.enabled = enabled and rank in tuple(ranks)
        self.start, self.end, self.rank = start, end, rank
        self.use_pytorch, self.cuda = use_pytorch, device_type == "cuda"
        self.directory = Path(directory or "profile")
        self._torch_profiler = None
        self.written: list[Path] = []

    def before_step(self, iteration: int) -> None:
        """iteration: steps completed so far."""
        if not self.enabled or iteration != self.start:
            return
        if self.use_pytorch:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._torch_profiler = torch.profiler.profile(activities=activities,
                                                          record_shapes=True)
            self._torch_profiler.__enter__()
        elif self.cuda:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()

    def after_step(self, iteration: int) -> None:
        if not self.enabled or iteration != self.end:
            return
        if self.cuda:
            torch.cuda.synchronize()
        if not self.use_pytorch:
            if self.cuda:
                torch.cuda.cudart().cudaProfilerStop()
            return
        prof, self._torch_profiler = self._torch_profiler, None
        if prof is None:  # resumed past the window's start
            return
        prof.__exit__(None, None, None)
        self.directory.mkdir(parents=True, exist_ok=True)
        trace = self.directory / f"trace_rank{self.rank}.json"
        table = self.directory / f"ops_rank{self.rank}.txt"
        prof.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if self.cuda else "cpu_time_total"
        steps = self.end - self.start
        table.write_text(f"steps {self.start + 1}-{self.end} ({steps} steps), rank {self.rank}\n"
                         + prof.key_averages().table(sort_by=sort, row_limit=60,
                                                     max_name_column_width=90))
        self.written = [trace, table]
