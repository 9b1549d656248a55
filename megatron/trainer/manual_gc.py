"""--manual-gc (Megatron-LM's flags): Python's garbage collector off while training, run at
chosen points instead.

An automatic collection of the oldest generation walks every live Python object: the model's,
the compiled graphs' and the kernel libraries' (quack's CuTe DSL keeps many). Such a pause lands
on whichever step crosses the threshold (a 607 ms step among 255 ms ones, seen once with
--mlp-kernel quack, did not recur with --manual-gc), and across data-parallel ranks one rank's
pause holds up all of them.
"""
from __future__ import annotations

import gc


class ManualGC:
    """With `enabled`: collect once and switch automatic collection off at `start()`; collect
    every `interval` steps (0: never between steps) and around evaluations if `around_eval`."""

    def __init__(self, enabled: bool, interval: int = 0, around_eval: bool = True):
        self.enabled, self.interval, self.around_eval = enabled, interval, around_eval
        self._was_enabled = True

    def start(self) -> None:
        if self.enabled:
            self._was_enabled = gc.isenabled()
            gc.disable()
            gc.collect()

    def after_step(self, iteration: int) -> None:
        if self.enabled and self.interval and iteration % self.interval == 0:
            gc.collect()

    def around_evaluation(self) -> None:
        if self.enabled and self.around_eval:
            gc.collect()

    def stop(self) -> None:
        """Automatic collection back as it was (a process that goes on after training)."""
        if self.enabled and self._was_enabled:
            gc.enable()
