"""Which sample indices each data-parallel rank reads, from a consumed-samples position.

Step k of training reads global samples [c, c + global_batch) in order, where c is the number
consumed before it; each micro-step takes the next micro_batch x DP of them and DP rank r takes
its contiguous micro_batch slice. So the global sample order is the same for every layout, and
restoring `consumed_samples` restores exactly the next batch. (Megatron's pretraining sampler
does the same; ours is a few lines and does not pull Megatron-LM's training package.)
"""
from __future__ import annotations


class PretrainingSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        if consumed_samples >= total_samples:
            raise ValueError(f"no samples left: consumed {consumed_samples} of {total_samples}")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size *
                                                                self.dp_size)

    def __iter__(self):
        span = self.micro_batch_size * self.dp_size
        start = self.dp_rank * self.micro_batch_size
        for first in range(self.consumed_samples, self.total_samples - span + 1, span):
            yield list(range(first + start, first + start + self.micro_batch_size))
