"""Our DeepSpeed checkpoints at any layout <-> one full (TP = 1) GPTModel state dict.

    cfg, full = load_full_state_dict("ckpt")                  # the `latest` tag; tag="..." for another
    shards = split_state_dict(full, partition_specs(cfg.model), tp=4)   # [rank 0, ..., rank 3]
    save_model_checkpoint("ckpt_tp4", cfg, shards)             # model weights only

A checkpoint directory holds `latest` (the tag) and `<tag>/config.json` (Config.to_dict()) with
either `<tag>/mp_rank_XX_model_states.pt` (PP = 1: key "module" is TP rank XX's GPTModel state
dict) or DeepSpeed PipelineModule files `<tag>/layer_II-model_XX-model_states.pt` (PP > 1: layer
0 the embedding, 1..N the transformer layers, the last one the output head; the tied projection
has no file). How a TP-sharded tensor is cut comes from megatron-core's parameter attributes
(`tensor_model_parallel`, `partition_dim`, `partition_stride`) of a GPTModel built on the meta
device: with stride s (2 for a fused GLU fc1 [gate | up]) each of the s blocks along the
partition dim is cut into TP pieces and rank r holds [block_0 piece r | ... | block_s-1 piece r].
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Optional

import torch

from megatron.config.schema import Config, ModelConfig

Spec = Optional[tuple]  # (partition_dim, stride) for a TP-sharded tensor, None when replicated
_MP_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
_LAYER_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")


def resolve_tag(load_dir: str, tag: Optional[str] = None) -> str:
    """The tag to read: `tag` if given, else the one named in `load_dir/latest`."""
    if not os.path.isdir(load_dir):
        raise FileNotFoundError(f"--load {load_dir}: no such checkpoint directory")
    if tag is None:
        latest = os.path.join(load_dir, "latest")
        if not os.path.isfile(latest):
            raise FileNotFoundError(f"--load {load_dir}: no `latest` file; pass --tag "
                                    f"(directories there: {sorted(os.listdir(load_dir))})")
        with open(latest) as f:
            tag = f.read().strip()
    if not os.path.isdir(os.path.join(load_dir, tag)):
        raise FileNotFoundError(f"--load {load_dir}: no checkpoint with tag {tag!r}")
    return tag


def load_config(load_dir: str, tag: str) -> Config:
    path = os.path.join(load_dir, tag, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--load {load_dir}: {path} is missing (not one of our checkpoints?)")
    with open(path) as f:
        return Config.from_dict(json.load(f))


def checkpoint_tp(load_dir: str, tag: str) -> int:
    """TP size the checkpoint was saved with (counted from its files)."""
    return len(_tp_ranks(os.path.join(load_dir, tag)))


def _tp_ranks(ckpt: str) -> list:
    mp = {int(m.group(1)) for f in os.listdir(ckpt) if (m := _MP_FILE.search(f))}
    layer = {int(m.group(2)) for f in os.listdir(ckpt) if (m := _LAYER_FILE.search(f))}
    ranks = sorted(layer or mp)
    if not ranks or ranks != list(range(len(ranks))):
        raise FileNotFoundError(f"{ckpt}: no complete set of model state files "
                                f"(mp_rank_XX_model_states.pt or layer_XX-model_YY-model_states.pt); "
                                f"TP ranks found: {ranks}")
    return ranks


def read_shard(load_dir: str, tag: str, tp_rank: int, num_layers: int, keep=None) -> dict:
    """TP rank `tp_rank`'s GPTModel state dict, whatever the PP size.

    keep: a predicate on GPTModel names; only those entries are returned, and the files are
    memory-mapped so the tensors left out are never read (a pipeline stage's share)."""
    ckpt = os.path.join(load_dir, tag)
    layer_files = sorted(glob.glob(os.path.join(ckpt, f"layer_*-model_{tp_rank:02d}-model_states.pt")))
    if layer_files:
        return _merge_pipeline_layers(layer_files, num_layers, keep)
    path = os.path.join(ckpt, f"mp_rank_{tp_rank:02d}_model_states.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--load {load_dir}: {path} is missing")
    state = _load(path, keep)
    if not isinstance(state.get("module"), dict):
        raise ValueError(f"{path}: no 'module' state dict in it")
    return _kept(state["module"], keep)


def _load(path: str, keep) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False, mmap=keep is not None)


def _kept(sd: dict, keep) -> dict:
    return sd if keep is None else {k: v for k, v in sd.items() if keep(k)}


def _merge_pipeline_layers(files: list, num_layers: int, keep=None) -> dict:
    """PipelineModule layer files -> GPTModel names (as megatron/trainer/pipeline.py's gpt_name)."""
    out = {}
    for path in files:
        index = int(_LAYER_FILE.search(path).group(1))
        prefix = ("embedding." if index == 0 else f"layers.{index - 1}." if index <= num_layers
                  else "head.")
        for k, v in _load(path, keep).items():
            out[prefix + k] = v
    return _kept(out, keep)


def read_shards(load_dir: str, tag: str, num_layers: int, keep=None) -> list:
    return [read_shard(load_dir, tag, r, num_layers, keep)
            for r in _tp_ranks(os.path.join(load_dir, tag))]


def partition_specs(model_cfg: ModelConfig) -> dict:
    """State-dict name -> (partition_dim, stride) or None, from a GPTModel built on meta.

    Needs megatron-core's parallel_state initialised (any TP size: the attributes do not
    depend on it)."""
    from megatron.core import parallel_state

    from megatron.model.gpt import GPTModel
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("partition_specs needs parallel_state: call "
                           "megatron.parallel.layout.initialize_parallel(ParallelConfig()) first")
    with torch.device("meta"):
        model = GPTModel(model_cfg)
    specs = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        sharded = getattr(t, "tensor_model_parallel", False)
        specs[name] = (t.partition_dim, t.partition_stride) if sharded else None
    return specs


def with_extra_state(sd: dict, model_cfg: ModelConfig) -> dict:
    """sd plus the non-tensor entries (megatron-core's `_extra_state`) a GPTModel state dict has,
    so a strict load_state_dict (DeepSpeed's) accepts a state dict made elsewhere (HF import)."""
    from megatron.model.gpt import GPTModel
    with torch.device("meta"):
        template = GPTModel(model_cfg).state_dict()
    return dict({k: v for k, v in template.items() if not torch.is_tensor(v)}, **sd)


def merge_shards(shards: list, specs: dict) -> dict:
    """TP shards (rank order) -> the full state dict; replicated tensors come from rank 0."""
    full = {}
    for name, value in shards[0].items():
        spec = specs.get(name)
        if spec is None or len(shards) == 1 or not torch.is_tensor(value):
            full[name] = value
            continue
        dim, stride = spec
        blocks = [s[name].chunk(stride, dim=dim) for s in shards]  # per rank: its s pieces
        full[name] = torch.cat([b[i] for i in range(stride) for b in blocks], dim=dim)
    return full


def split_state_dict(full: dict, specs: dict, tp: int) -> list:
    """The full state dict -> `tp` shards, the inverse of merge_shards."""
    shards = [{} for _ in range(tp)]
    for name, value in full.items():
        spec = specs.get(name)
        if spec is None or not torch.is_tensor(value):
            for s in shards:
                s[name] = value
            continue
        dim, stride = spec
        if value.shape[dim] % (stride * tp):
            raise ValueError(f"{name}: dim {dim} of size {value.shape[dim]} does not split into "
                             f"{stride} x TP {tp} equal parts")
        pieces = [block.chunk(tp, dim=dim) for block in value.chunk(stride, dim=dim)]
        for r in range(tp):
            shards[r][name] = torch.cat([p[r] for p in pieces], dim=dim).clone()
    return shards


def check_shapes(sd: dict, specs: dict, model_cfg: ModelConfig, source: str) -> None:
    """Refuse a state dict whose tensor names differ from the config's model."""
    ours = set(specs)
    theirs = {k for k, v in sd.items() if torch.is_tensor(v)}
    if ours != theirs:
        raise ValueError(f"{source}: the weights do not match the model of its config.json "
                         f"(missing {sorted(ours - theirs)[:5]}, unexpected "
                         f"{sorted(theirs - ours)[:5]})")


def load_full_state_dict(load_dir: str, tag: Optional[str] = None) -> tuple:
    """(Config, full TP = 1 state dict) of a checkpoint saved at any TP (and PP) size."""
    tag = resolve_tag(load_dir, tag)
    cfg = load_config(load_dir, tag)
    specs = partition_specs(cfg.model)
    full = merge_shards(read_shards(load_dir, tag, cfg.model.num_layers), specs)
    check_shapes(full, specs, cfg.model, f"--load {load_dir} (tag {tag})")
    return cfg, full


def save_model_checkpoint(out_dir: str, cfg: Config, shards: list, tag: str = "release") -> str:
    """Write weights-only mp_rank_XX_model_states.pt files, config.json (TP set to len(shards),
    PP 1) and `latest`. Returns the tag directory."""
    tp = len(shards)
    cfg = cfg.replace(parallel={"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": 1})
    ckpt = os.path.join(out_dir, tag)
    os.makedirs(ckpt, exist_ok=True)
    for r, sd in enumerate(shards):
        torch.save({"module": sd, "mp_world_size": tp, "dp_world_size": 1, "config": cfg.to_dict()},
                   os.path.join(ckpt, f"mp_rank_{r:02d}_model_states.pt"))
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, default=str)
    with open(os.path.join(out_dir, "latest"), "w") as f:
        f.write(tag)
    return ckpt


def eval_model_config(model_cfg: ModelConfig) -> ModelConfig:
    """The config to build for inference: no dropout, torch's MLP and attention kernels (a
    training run's --mlp-kernel quack or --attention-kernel fa4 needs a Hopper GPU and bf16;
    the weights are the same either way)."""
    attention = "auto" if model_cfg.attention_kernel == "fa4" else model_cfg.attention_kernel
    return dataclasses.replace(model_cfg, hidden_dropout=0.0, attention_dropout=0.0,
                               mlp_kernel="torch", attention_kernel=attention)
