"""Small megatron-core indexed datasets and GPT dataset builds for the data tests.

    prefix = write_indexed(tmp / "a", [[1, 2, 3], [4, 5]])       # PREFIX.bin + PREFIX.idx
    train, valid, test = build(data_config(prefix, split="90,10,0"), 8, (100, 10, 0))

`build` goes through megatron/data/gpt_datasets.py (megatron-core's builder), which needs
torch.distributed: call it inside `run_on_ranks` (`init_gloo` first).
"""
from __future__ import annotations

import os

import numpy
import torch

VOCAB = 1000  # NullTokenizer ids 0..999, EOD = 1000


def write_indexed(prefix, docs, dtype=numpy.uint16) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    prefix = str(prefix)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix


def data_config(*data_path, split="100,0,0", cache=None, **kw):
    from megatron.config.schema import DataConfig
    return DataConfig(data_path=tuple(str(x) for x in data_path), split=split,
                      data_cache_path=None if cache is None else str(cache),
                      tokenizer_type="NullTokenizer", vocab_size=VOCAB, **kw)


def init_gloo(rank: int, world_size: int) -> None:
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world_size)


def build(cfg, seq_length: int, sizes, seed: int = 1234):
    from megatron.data.gpt_datasets import SplitSizes, build_gpt_datasets
    from megatron.data.tokenizers import build_tokenizer
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=VOCAB)
    return build_gpt_datasets(cfg, tokenizer, seq_length, seed, SplitSizes(*sizes))


def rows(dataset, indices) -> list:
    """The token rows of dataset samples, as tuples."""
    return [tuple(dataset[int(i)]["tokens"].tolist()) for i in indices]


def cache_files(root) -> dict:
    """{relative path: mtime_ns} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.stat(p).st_mtime_ns
    return out


class SaveSpy:
    """Counts numpy.save calls (megatron-core writes its index cache with numpy.save)."""

    def __init__(self):
        self.calls, self._orig = 0, numpy.save

    def __enter__(self):
        def save(*args, **kwargs):
            self.calls += 1
            return self._orig(*args, **kwargs)
        numpy.save = save
        return self

    def __exit__(self, *exc):
        numpy.save = self._orig
