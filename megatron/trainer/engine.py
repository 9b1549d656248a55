"""The one training-engine interface the loop talks to (DeepSpeed is behind it)."""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from megatron.data.batch import Batch
from megatron.trainer.timers import NullTimer


@dataclass
class StepResult:
    loss: float            # mean over the global batch's micro-batches and DP ranks
    grad_norm: Optional[float]
    lr: float
    skipped: bool          # the optimizer did not apply this step (e.g. fp16 overflow)
    layer_grad_norms: Optional[dict] = None  # {"embedding"|"layers.N"|"head": L2 norm}


class PendingStep:
    """A training step whose device work is queued. result() waits for it (the first call
    only) and returns its StepResult. Then observed_at is the perf_counter() time that
    happened, and finished_at the time the step's work finished: device_time() where the
    engine gives it (the device may have finished long before the host looked), else the
    same as observed_at."""

    def __init__(self, resolve: Callable[[], StepResult],
                 device_time: Optional[Callable[[], float]] = None):
        self._resolve: Optional[Callable[[], StepResult]] = resolve
        self._device_time = device_time
        self._result: Optional[StepResult] = None
        self.finished_at: Optional[float] = None
        self.observed_at: Optional[float] = None

    def result(self) -> StepResult:
        if self._resolve is not None:
            resolve, self._resolve = self._resolve, None
            self._result = resolve()
            self.observed_at = time.perf_counter()
            self.finished_at = self._device_time() if self._device_time else self.observed_at
        return self._result

    @classmethod
    def done(cls, result: StepResult) -> "PendingStep":
        step = cls(lambda: result)
        step.result()
        return step


class TrainEngine(abc.ABC):
    """Owns model, optimizer, precision and parallel communication for training."""

    # Times the phases of a step (megatron/trainer/timers.py); PhaseTimer with
    # --log-timers-to-tensorboard, a no-op otherwise.
    timer = NullTimer()

    def describe_optimizer(self) -> str:
        """For the start-up log: which optimizer runs (and why, where a flag chose it)."""
        return ""

    @abc.abstractmethod
    def train_step(self, micro_batches: Sequence[Batch], samples: int,
                   layer_grad_norms: bool = False, skip_if=None,
                   before_sync: Optional[Callable[[], None]] = None) -> StepResult:
        """Forward/backward over one global batch's micro-batches, then one optimizer step;
        advance the LR schedule by `samples`. layer_grad_norms: also measure each block's
        gradient norm (before clipping). skip_if(mean loss) -> True drops the step's update
        (reported as skipped), decided on the global batch's loss before the optimizer step.
        before_sync(): host work (reading the next batch) to run once the step's device work
        is queued, before the engine waits for its results; called exactly once."""

    def start_step(self, micro_batches: Sequence[Batch], samples: int,
                   layer_grad_norms: bool = False, skip_if=None,
                   before_sync: Optional[Callable[[], None]] = None) -> PendingStep:
        """train_step, returning once the step is queued where the engine can, so that the
        caller queues the next step before this one's results reach the host (the device
        then never waits for the host between steps). The engine finishes the step (its
        results, then its LR schedule step) before it updates weights again, skips, saves or
        loads. Default: train_step."""
        return PendingStep.done(self.train_step(micro_batches, samples, layer_grad_norms,
                                                skip_if, before_sync))

    @abc.abstractmethod
    def skip_step(self, samples: int) -> None:
        """Advance the LR schedule by `samples` without training (a skipped iteration)."""

    @abc.abstractmethod
    def param_norm(self) -> float:
        """L2 norm of all model parameters (unsharded, over every parallel rank)."""

    @abc.abstractmethod
    def set_global_batch_size(self, global_batch_size: int) -> None:
        """Samples per optimizer step from now on (batch-size rampup); micro-batch size fixed."""

    @abc.abstractmethod
    def eval_loss(self, batch: Batch) -> tuple[float, float]:
        """(sum of token losses, number of tokens) of one micro-batch, without gradients."""

    @abc.abstractmethod
    def save(self, directory: str, tag: str, client_state: dict) -> None:
        """Write model, optimizer, scheduler and client_state under directory/tag (collective;
        does not touch directory/latest)."""

    @abc.abstractmethod
    def load(self, directory: str, tag: str, load_optimizer: bool = True,
             load_rng: bool = True) -> dict:
        """Restore directory/tag (with the model's dropout RNG streams unless load_rng is
        False); return its client_state."""
