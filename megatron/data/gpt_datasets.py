"""Train/valid/test GPT datasets from `--data-path` blends, through megatron-core.

megatron-core's `BlendedMegatronDatasetBuilder` builds the shuffled sample indices on rank 0
first (cached under `--data-cache-path`), then every other rank loads them: built once, no race.
Every rank builds its own datasets (the files are memory-mapped), so no broadcast is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron.config.schema import DataConfig
from megatron.data.blend import megatron_blend
from megatron.data.sampler import PretrainingSampler


@dataclass(frozen=True)
class SplitSizes:
    train: int
    valid: int
    test: int


def build_gpt_datasets(data: DataConfig, tokenizer, seq_length: int, seed: int,
                       sizes: SplitSizes):
    """(train, valid, test) datasets of at least the given numbers of samples (None if empty)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import \
        BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    blend = None if data.mock_data else megatron_blend(data.data_path)
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=blend,
        split=data.split, path_to_cache=data.data_cache_path, tokenizer=tokenizer,
        reset_position_ids=data.reset_position_ids,
        reset_attention_mask=data.reset_attention_mask, eod_mask_loss=data.eod_mask_loss,
        create_attention_mask=False)  # the model builds its masks from document ids
    cls = MockGPTDataset if data.mock_data else GPTDataset
    builder = BlendedMegatronDatasetBuilder(cls, [sizes.train, sizes.valid, sizes.test],
                                            lambda: True, config)
    return tuple(builder.build())


def make_loader(dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                dp_size: int, num_workers: int = 0) -> Optional[torch.utils.data.DataLoader]:
    if dataset is None or len(dataset) == 0:
        return None
    sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank,
                                 dp_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(),
                                       persistent_workers=num_workers > 0)
