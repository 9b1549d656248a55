"""Writing megatron-core indexed datasets (`PREFIX.bin` + `PREFIX.idx`) safely.

The format itself is megatron-core's (`IndexedDatasetBuilder`); this module adds: the dtype for
a vocabulary, refusing to overwrite, writing under temporary names renamed into place only
when complete, reading an index header, and merging.
"""
from __future__ import annotations

import os
import struct
from typing import Optional, Sequence

import numpy
import torch
from megatron.core.datasets.indexed_dataset import (
    _INDEX_HEADER,
    DType,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)


def dtype_for_vocab(vocab_size: int, dtype: Optional[type] = None) -> type:
    """uint16 if the ids fit, else int32 (megatron-core's rule); error if `dtype` is too small."""
    dtype = dtype or DType.optimal_dtype(vocab_size)
    if vocab_size - 1 > numpy.iinfo(dtype).max:
        raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit in "
                         f"{numpy.dtype(dtype).name} (max id {numpy.iinfo(dtype).max})")
    return dtype


def existing_outputs(prefixes: Sequence[str]) -> list:
    """The .bin/.idx files of `prefixes` that already exist."""
    paths = [p for prefix in prefixes for p in (get_bin_path(prefix), get_idx_path(prefix))]
    return [p for p in paths if os.path.exists(p)]


def read_dtype(prefix: str) -> type:
    """The token dtype recorded in `PREFIX.idx` (checks the magic and version)."""
    path = get_idx_path(prefix)
    with open(path, "rb") as f:
        head = f.read(len(_INDEX_HEADER) + 9)
    if len(head) < len(_INDEX_HEADER) + 9 or head[: len(_INDEX_HEADER)] != _INDEX_HEADER:
        raise ValueError(f"{path}: not a megatron indexed dataset index (bad header)")
    (version,) = struct.unpack("<Q", head[len(_INDEX_HEADER):-1])
    if version != 1:
        raise ValueError(f"{path}: unsupported index version {version}")
    return DType.dtype_from_code(head[-1])


class AtomicDatasetWriter:
    """An IndexedDatasetBuilder writing `PREFIX.tmp-PID.{bin,idx}`; `commit()` renames them to
    `PREFIX.{bin,idx}` (.idx last), `abort()` deletes them. Use as a context manager: leaving
    the block with an exception aborts."""

    def __init__(self, prefix: str, dtype: type):
        self.prefix, self.dtype = prefix, dtype
        self.tmp_prefix = f"{prefix}.tmp-{os.getpid()}"
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self.builder = IndexedDatasetBuilder(get_bin_path(self.tmp_prefix), dtype=dtype)
        self._done = False

    def add_document(self, ids) -> None:
        """One document of one sequence (Megatron's add_item + end_document)."""
        self.builder.add_item(torch.as_tensor(ids))
        self.builder.end_document()

    def add_index(self, prefix: str) -> None:
        """Append a whole dataset, which must have the same dtype."""
        dtype = read_dtype(prefix)
        if dtype != self.dtype:
            raise ValueError(f"{get_idx_path(prefix)} holds {numpy.dtype(dtype).name} tokens but "
                             f"the output is {numpy.dtype(self.dtype).name}; datasets of "
                             "different dtypes cannot be merged")
        self.builder.add_index(prefix)

    def commit(self) -> list:
        self.builder.finalize(get_idx_path(self.tmp_prefix))
        os.replace(get_bin_path(self.tmp_prefix), get_bin_path(self.prefix))
        os.replace(get_idx_path(self.tmp_prefix), get_idx_path(self.prefix))
        self._done = True
        return [get_bin_path(self.prefix), get_idx_path(self.prefix)]

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if not self.builder.data_file.closed:
            self.builder.data_file.close()
        for path in (get_bin_path(self.tmp_prefix), get_idx_path(self.tmp_prefix)):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return None


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> list:
    """Concatenate datasets (documents in the given order) into `output_prefix`; returns files."""
    if not prefixes:
        raise ValueError("nothing to merge: no input datasets")
    dtypes = {p: read_dtype(p) for p in prefixes}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{p} ({numpy.dtype(d).name})" for p, d in dtypes.items())
        raise ValueError(f"cannot merge datasets of different dtypes: {listing}")
    for p in prefixes:
        if not os.path.exists(get_bin_path(p)):
            raise ValueError(f"{get_bin_path(p)}: missing (its .idx exists)")
    with AtomicDatasetWriter(output_prefix, dtypes[prefixes[0]]) as writer:
        for p in prefixes:
            writer.add_index(p)
        return writer.commit()
