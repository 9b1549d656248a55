"""BigScience's per-split data: --{train,valid,test}-weighted-split-paths[-path].

A group is "NAME: WEIGHT START:END PREFIX, WEIGHT START:END PREFIX, ...": a weighted blend of
datasets, each limited to the fraction [START, END) of its documents (BLOOM trained on 0:0.95 of
every source and validated on 0.95:1). The -path flags name a file holding the groups on one
line, each in double quotes, as BigScience's load_ratios_meg_ds_format.py writes it. Training
takes exactly one group; validation and test take any number, each evaluated on its own.

The datasets are megatron-core's GPTDataset (over the document range) and BlendedDataset, built
with its builder's rank-0-first helper; megatron-core has no per-dataset document ranges in its
own per-split mode (`blend_per_split` always takes whole datasets), hence this module.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass

SPLITS = ("train", "valid", "test")


class WeightedSplitError(ValueError):
    """A malformed group or file; the message names the flag (and file) and the bad part."""


@dataclass(frozen=True)
class Part:
    weight: float
    start: float  # fraction of the dataset's documents
    end: float
    prefix: str


@dataclass(frozen=True)
class Group:
    name: str
    parts: tuple[Part, ...]


def parse_group(text: str, where: str) -> Group:
    """'NAME: W S:E PREFIX, ...' -> Group; `where` names the flag/file in errors."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip() or not body.strip():
        raise WeightedSplitError(f"{where}: {text!r} is not 'NAME: WEIGHT START:END PREFIX, "
                                 f"...'")
    parts = []
    for item in body.split(","):
        fields = item.split()
        if len(fields) != 3 or ":" not in fields[1]:
            raise WeightedSplitError(f"{where}: {item.strip()!r} in group {name.strip()!r} is not "
                                     f"'WEIGHT START:END PREFIX'")
        try:
            weight = float(fields[0])
            start, end = (float(x) for x in fields[1].split(":"))
        except ValueError:
            raise WeightedSplitError(f"{where}: {item.strip()!r}: WEIGHT and START:END must be "
                                     f"numbers") from None
        if weight <= 0 or not 0 <= start < end <= 1:
            raise WeightedSplitError(f"{where}: {item.strip()!r}: need WEIGHT > 0 and "
                                     f"0 <= START < END <= 1")
        parts.append(Part(weight, start, end, fields[2]))
    return Group(name.strip(), tuple(parts))


def read_groups_file(path: str, flag: str) -> list[str]:
    """The quoted groups of a BigScience split file ("NAME: ..." "NAME2: ..." on one line)."""
    if not os.path.isfile(path):
        raise WeightedSplitError(f"{flag} {path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if len(lines) != 1:
        raise WeightedSplitError(f"{flag} {path}: expected one line of quoted groups, found "
                                 f"{len(lines)} lines")
    try:
        groups = shlex.split(lines[0])
    except ValueError as e:
        raise WeightedSplitError(f"{flag} {path}: {e} (each group goes in double quotes)") \
            from None
    return groups


def groups_for(data, split: str) -> list[Group]:
    """The groups a DataConfig gives `split` ("train"/"valid"/"test"), parsed and checked."""
    inline = getattr(data, f"{split}_weighted_split_paths")
    path = getattr(data, f"{split}_weighted_split_paths_path")
    flag = f"--{split}-weighted-split-paths"
    if inline and path:
        raise WeightedSplitError(f"{flag} and {flag}-path are both given; use one")
    texts, where = (read_groups_file(path, flag + "-path"), f"{flag}-path {path}") if path \
        else (list(inline), flag)
    groups = [parse_group(t, where) for t in texts]
    if split == "train" and len(groups) > 1:
        raise WeightedSplitError(f"{where}: training takes one group, got {len(groups)} "
                                 f"({', '.join(g.name for g in groups)})")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise WeightedSplitError(f"{where}: group names repeat: {names}")
    return groups


def all_groups(data) -> dict[str, list[Group]]:
    """{"train": [one group], "valid": [...], "test": [...]}, parsed and checked."""
    groups = {s: groups_for(data, s) for s in SPLITS}
    if not groups["train"]:
        raise WeightedSplitError("--valid/--test-weighted-split-paths need "
                                 "--train-weighted-split-paths(-path) too")
    return groups


def uses_weighted_splits(data) -> bool:
    return any(getattr(data, f"{s}_weighted_split_paths{x}") for s in SPLITS for x in ("", "_path"))


def build_group_dataset(group: Group, split: str, num_samples: int, config):
    """megatron-core BlendedDataset of `num_samples` over the group's document ranges (every
    rank builds it; rank 0 first, so the index cache is written once)."""
    import numpy
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import \
        BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    build = BlendedMegatronDatasetBuilder.build_generic_dataset
    index_split = {"train": Split.train, "valid": Split.valid, "test": Split.test}[split]
    total = sum(p.weight for p in group.parts)
    weights = [p.weight / total for p in group.parts]
    targets = [math.ceil(num_samples * w) for w in weights]  # as megatron-core's builder does
    surplus = config.mid_level_dataset_surplus
    datasets = []
    for part, target in zip(group.parts, targets):
        low = GPTDataset.build_low_level_dataset(part.prefix, config)
        n = GPTDataset.numel_low_level_dataset(low)
        begin, end = int(round(part.start * n)), int(round(part.end * n))
        if end <= begin:
            raise WeightedSplitError(f"group {group.name!r}: {part.prefix} has {n} documents; "
                                     f"{part.start}:{part.end} selects none")
        documents = numpy.arange(begin, end, dtype=numpy.int32)
        datasets.append(build(GPTDataset, lambda: True, True, low, part.prefix, documents,
                              math.ceil(target * (1 + surplus)), index_split, config))
    return build(BlendedDataset, lambda: True, True, datasets, weights, sum(targets), config)


def prefixes(groups: list[Group]) -> list[str]:
    return [p.prefix for g in groups for p in g.parts]

