"""Global batch size per step, with optional `--rampup-batch-size START INCREMENT SAMPLES`
(megatron-core's microbatch calculators: START, growing by INCREMENT at even intervals over the
first SAMPLES samples, then --global-batch-size)."""
from __future__ import annotations

from megatron.config.schema import Config


def build_batch_calculator(cfg: Config, gbs: int, dp: int, rank: int):
    from megatron.core.num_microbatches_calculator import (
        ConstantNumMicroBatchesCalculator, RampupBatchsizeNumMicroBatchesCalculator)

    mbs = cfg.training.micro_batch_size
    if cfg.training.rampup_batch_size is None:
        return ConstantNumMicroBatchesCalculator(gbs, mbs, dp, False, rank)
    start, increment, samples = cfg.training.rampup_batch_size
    return RampupBatchsizeNumMicroBatchesCalculator(gbs, mbs, dp, False, rank, start, increment,
                                                    samples)


def batch_size_at(calc, consumed_samples: int) -> int:
    calc.update(consumed_samples, consistency_check=True)
    return calc.get_current_global_batch_size()


def train_iterations(calc, train_samples: int) -> tuple[int, int]:
    """(optimizer steps, samples they read) to consume train_samples under the calculator's
    batch sizes; the last step may read past train_samples."""
    consumed, steps = 0, 0
    while consumed < train_samples:
        consumed += batch_size_at(calc, consumed)
        steps += 1
    batch_size_at(calc, 0)
    return steps, consumed
