"""Train/valid/test GPT datasets from `--data-path` blends (or BigScience's weighted split paths,
see weighted_splits.py), through megatron-core.

megatron-core's `BlendedMegatronDatasetBuilder` builds the shuffled sample indices on rank 0
first (cached under `--data-cache-path`), then every other rank loads them: built once, no race.
Every rank builds its own datasets (the files are memory-mapped), so no broadcast is needed.
Each `.bin` is checked against its `.idx` first (`check_indexed_dataset`): megatron-core reads
whatever bytes are there, so a truncated `.bin` or an `.idx` of another dataset would otherwise
give garbage tokens or fail later without naming the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy
import torch

from megatron.config.schema import DataConfig
from megatron.data.blend import megatron_blend
from megatron.data.sampler import PretrainingSampler


@dataclass(frozen=True)
class SplitSizes:
    train: int
    valid: int
    test: int


class IndexedDatasetError(ValueError):
    """A `.bin`/`.idx` pair that does not belong together (truncated, swapped, corrupt)."""


_HEADER_BYTES = 34  # magic (9), version (8), dtype code (1), sequence and document counts (8+8)


def check_indexed_dataset(prefix: str) -> None:
    """Check that PREFIX.idx is a whole index and PREFIX.bin holds exactly the tokens it
    describes (sizes, pointers, dtype); IndexedDatasetError naming the file otherwise."""
    from megatron.core.datasets.indexed_dataset import DType, get_bin_path, get_idx_path

    from megatron.data.indexed_io import read_dtype
    idx, bin_ = get_idx_path(prefix), get_bin_path(prefix)
    try:
        dtype = read_dtype(prefix)
    except (ValueError, KeyError) as e:
        raise IndexedDatasetError(f"{idx}: {e}") from e
    with open(idx, "rb") as f:
        f.seek(_HEADER_BYTES - 16)
        counts = f.read(16)
    if len(counts) < 16:
        raise IndexedDatasetError(f"{idx}: truncated index (no sequence/document counts)")
    sequences, documents = struct.unpack("<QQ", counts)
    idx_size = os.path.getsize(idx)
    arrays = _HEADER_BYTES + 12 * sequences + 8 * documents
    if idx_size not in (arrays, arrays + sequences):  # (+ int8 modes when multimodal)
        raise IndexedDatasetError(f"{idx}: {idx_size} bytes, but its header announces "
                                  f"{sequences} sequences and {documents} document indices "
                                  f"({arrays} bytes): truncated or corrupt index")
    if sequences == 0:
        return
    lengths = numpy.memmap(idx, dtype=numpy.int32, mode="r", offset=_HEADER_BYTES,
                           shape=(sequences,))
    pointers = numpy.memmap(idx, dtype=numpy.int64, mode="r",
                            offset=_HEADER_BYTES + 4 * sequences, shape=(sequences,))
    docs = numpy.memmap(idx, dtype=numpy.int64, mode="r",
                        offset=_HEADER_BYTES + 12 * sequences, shape=(documents,))
    item = DType.size(dtype)
    want = int(lengths.sum(dtype=numpy.int64)) * item
    have = os.path.getsize(bin_) if os.path.isfile(bin_) else None
    if have is None:
        raise IndexedDatasetError(f"{bin_}: missing (its index is {idx})")
    if have != want or pointers[0] != 0 or \
            int(pointers[-1]) + int(lengths[-1]) * item != want:
        raise IndexedDatasetError(
            f"{bin_}: {have} bytes, but {idx} describes {sequences} sequences of "
            f"{numpy.dtype(dtype).name} tokens in {want} bytes: the .bin is truncated or the "
            f".idx belongs to another dataset (re-run tools/preprocess_data.py)")
    if documents == 0 or docs[0] != 0 or docs[-1] != sequences:
        raise IndexedDatasetError(f"{idx}: document indices do not cover its {sequences} "
                                  f"sequences: corrupt index")


def _dataset_config(data: DataConfig, tokenizer, seq_length: int, seed: int, **source):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    return GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, path_to_cache=data.data_cache_path,
        tokenizer=tokenizer, reset_position_ids=data.reset_position_ids,
        reset_attention_mask=data.reset_attention_mask, eod_mask_loss=data.eod_mask_loss,
        create_attention_mask=False,  # the model builds its masks from document ids
        **source)


def build_datasets(data: DataConfig, tokenizer, seq_length: int, seed: int, sizes: SplitSizes):
    """(train, [(name, valid)], [(name, test)]): from --data-path/--split (one unnamed valid and
    test set, "") or from BigScience's weighted split paths (one set per named group)."""
    from megatron.data import weighted_splits as ws
    if not ws.uses_weighted_splits(data):
        train, valid, test = build_gpt_datasets(data, tokenizer, seq_length, seed, sizes)
        return train, [("", valid)] if valid else [], [("", test)] if test else []
    groups = ws.all_groups(data)
    for prefix in ws.prefixes(sum(groups.values(), [])):
        check_indexed_dataset(prefix)
    config = _dataset_config(data, tokenizer, seq_length, seed, blend_per_split=[
        (ws.prefixes(groups[s]), None) if groups[s] else None for s in ws.SPLITS])
    count = {"train": sizes.train, "valid": sizes.valid, "test": sizes.test}
    built = {s: [(g.name, ws.build_group_dataset(g, s, count[s], config)) for g in groups[s]]
             for s in ws.SPLITS}
    for _, ds in sum(built.values(), []):
        _no_mask_cache(ds)
    return built["train"][0][1], built["valid"], built["test"]


def build_gpt_datasets(data: DataConfig, tokenizer, seq_length: int, seed: int,
                       sizes: SplitSizes):
    """(train, valid, test) datasets of at least the given numbers of samples (None if empty)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import \
        BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    blend = None if data.mock_data else megatron_blend(data.data_path)
    for prefix in blend[0] if blend else ():
        check_indexed_dataset(prefix)
    config = _dataset_config(data, tokenizer, seq_length, seed, blend=blend, split=data.split)
    cls = MockGPTDataset if data.mock_data else GPTDataset
    builder = BlendedMegatronDatasetBuilder(cls, [sizes.train, sizes.valid, sizes.test],
                                            lambda: True, config)
    datasets = tuple(builder.build())
    for ds in datasets:
        _no_mask_cache(ds)
    return datasets


def _no_mask_cache(dataset) -> None:
    """Turn off GPTDataset's cache of loss mask and position ids (and in blends' parts).

    megatron-core 0.16.1 caches the first sample's loss mask *after* zeroing that sample's pad
    labels in place, so every later sample inherits the pad positions of whichever sample this
    process read first, and that depends on where a run resumed. Recomputing them per sample
    (a ones tensor and an arange here) keeps each sample's mask its own.
    """
    if dataset is None:
        return
    for part in getattr(dataset, "datasets", None) or (dataset,):
        if hasattr(part, "masks_and_position_ids_are_cacheable"):
            part.masks_and_position_ids_are_cacheable = False


def make_loader(dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                dp_size: int, num_workers: int = 0) -> Optional[torch.utils.data.DataLoader]:
    if dataset is None or len(dataset) == 0:
        return None
    sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank,
                                 dp_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(),
                                       persistent_workers=num_workers > 0)
