"""Layout-independent ("universal") checkpoints: resume a run on other TP / PP / DP sizes with
its weights, fp32 master weights and Adam moments.

    torchrun --nproc-per-node <saved world size> tools/checkpoint_to_universal.py \
        --load ckpt --save ckpt_universal                       # at the layout it was saved at
    pretrain_gpt.py ... --universal-checkpoint --load ckpt_universal   # at any layout

Writing: every rank loads the DeepSpeed checkpoint into an engine of the saved layout, gathers
each of its parameters' full fp32 master, exp_avg and exp_avg_sq over the ZeRO partitions
(DeepSpeed's safe_get_full_* API), and data-parallel rank 0 of each (TP, PP) rank writes them
per layer; the TP shards of each layer are then merged (megatron/eval/checkpoint_loader's
merge/split rules), one layer file per model block: <tag>/universal/<block>.pt
({GPTModel name: {"fp32", "exp_avg", "exp_avg_sq"}}) plus meta.pt (progress, Adam step count,
LR scheduler, global RNG states) and config.json.

Reading: each rank loads the layer files its stage needs, cuts its TP shard, and sets master
weights, moments and the model's own (possibly bf16) weights through safe_set_full_*. The
vocabulary rows follow the new padded size (new rows start at zero). The dropout RNG streams
start afresh: with dropout on, the curve continues statistically, not bitwise.

DeepSpeed's own ds_to_universal needs Megatron-DeepSpeed's parameter naming and metadata, and
its loader matches parameters by name, which differs between our PP = 1 model and pipeline
stages; hence this module on its public fragment API.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Optional

import torch

STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")
VOCAB_ROWS = ("embedding.word_embeddings.weight", "head.output_layer.weight")


def block_of(gpt_name: str) -> str:
    """'layers.3.mlp.fc1.weight' -> 'layers.3'; 'embedding.…' -> 'embedding'; else 'head'."""
    m = re.match(r"(layers\.\d+)\.", gpt_name)
    return m.group(1) if m else gpt_name.split(".", 1)[0]


def named_gpt_parameters(model, cfg) -> list[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters under GPTModel names (pipeline stages renamed)."""
    named = list(model.named_parameters())
    if cfg.parallel.pipeline_model_parallel_size == 1:
        return named
    from megatron.trainer.pipeline import gpt_name
    return [(gpt_name(n, cfg.model.num_layers), p) for n, p in named]


def _base_optimizer(ds_optimizer):
    """The torch optimizer holding the states (inside DeepSpeed's ZeRO/bf16 wrapper or not)."""
    return getattr(ds_optimizer, "optimizer", ds_optimizer)


def _uses_fragments(param) -> bool:
    return hasattr(param, "_hp_mapping")


def full_states(param, ds_optimizer) -> dict:
    """{"fp32", "exp_avg", "exp_avg_sq"} of one parameter, whole (collective over DP for ZeRO)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    if _uses_fragments(param):
        return {"fp32": safe_get_full_fp32_param(param).float(),
                **{k: safe_get_full_optimizer_state(param, k).float()
                   for k in ("exp_avg", "exp_avg_sq")}}
    state = _base_optimizer(ds_optimizer).state.get(param, {})
    zeros = torch.zeros_like(param, dtype=torch.float32)
    master = state.get("master", param.detach())  # --bf16-optimizer local keeps fp32 masters
    return {"fp32": master.float(), "exp_avg": state.get("exp_avg", zeros).float(),
            "exp_avg_sq": state.get("exp_avg_sq", zeros).float()}


def link_optimizer_states(ds_optimizer) -> None:
    """Point each parameter's fragment at its slice of the (loaded or prepared) Adam states:
    DeepSpeed links them only at its first step."""
    if hasattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state"):
        ds_optimizer._hp_optimizer_states_linked = False
        ds_optimizer._lazy_init_hp_params_optimizer_state()


def adam_step(ds_optimizer) -> int:
    for state in _base_optimizer(ds_optimizer).state.values():
        if "step" in state:
            return int(float(state["step"]))
    return 0


# ---- writing -----------------------------------------------------------------------------

def write_rank_states(engine, cfg, layout, out_dir: str) -> None:
    """Every rank gathers its parameters' states; DP rank 0 of each (TP, PP) rank writes them
    per block to out_dir/shards/<block>/tp<NN>_pp<NN>.pt."""
    link_optimizer_states(engine.optimizer)
    blocks: dict[str, dict] = {}
    for name, p in named_gpt_parameters(engine.model, cfg):
        states = {k: v.cpu() for k, v in full_states(p, engine.optimizer).items()}
        blocks.setdefault(block_of(name), {})[name] = states
    if layout.dp_rank == 0:
        for block, params in blocks.items():
            if block == "embedding" and layout.pp > 1 and layout.pp_rank > 0:
                continue  # the tied copy on the last stage: stage 0 writes the embedding
            d = os.path.join(out_dir, "shards", block)
            os.makedirs(d, exist_ok=True)
            torch.save(params, os.path.join(d, f"tp{layout.tp_rank:02d}_pp{layout.pp_rank:02d}.pt"))


def merge_blocks(out_dir: str, model_cfg, rank: int, world_size: int) -> None:
    """Merge each block's TP shards into out_dir/universal/<block>.pt (blocks spread over the
    ranks), then drop the shards."""
    from megatron.eval.checkpoint_loader import merge_shards, partition_specs
    specs = partition_specs(model_cfg)
    blocks = sorted(os.listdir(os.path.join(out_dir, "shards")))
    os.makedirs(os.path.join(out_dir, "universal"), exist_ok=True)
    for block in blocks[rank::world_size]:
        files = sorted(glob.glob(os.path.join(out_dir, "shards", block, "tp*_pp*.pt")))
        by_tp: dict[int, dict] = {}
        for f in files:
            tp = int(re.search(r"tp(\d+)_pp", f).group(1))
            by_tp.setdefault(tp, {}).update(torch.load(f, map_location="cpu", weights_only=True))
        shards = [by_tp[t] for t in sorted(by_tp)]
        merged = {}
        for key in STATE_KEYS:
            full = merge_shards([{n: s[n][key] for n in s} for s in shards], specs)
            for n, t in full.items():
                merged.setdefault(n, {})[key] = t
        torch.save(merged, os.path.join(out_dir, "universal", f"{block}.pt"))


# ---- reading -----------------------------------------------------------------------------

def _fit_rows(name: str, full: torch.Tensor, rows: int) -> torch.Tensor:
    """A vocabulary-sized tensor cut or zero-padded to this layout's padded vocabulary."""
    if name not in VOCAB_ROWS or full.shape[0] == rows:
        return full
    if full.shape[0] > rows:
        return full[:rows].clone()
    return torch.cat([full, full.new_zeros(rows - full.shape[0], *full.shape[1:])])


def _prepare_optimizer_states(ds_optimizer, step: int) -> None:
    """Adam states (zeros, the saved step count) on every flat partition, linked to the
    parameters' fragments, so they can be set before the first step."""
    base = _base_optimizer(ds_optimizer)
    for group in base.param_groups:
        # torch's Adam keeps `step` on the parameters' device for fused/capturable kernels
        # (which refuse a CPU one), on the CPU otherwise
        on_device = group.get("fused") or group.get("capturable")
        for flat in group["params"]:
            state = base.state[flat]
            for key in ("exp_avg", "exp_avg_sq"):
                state.setdefault(key, torch.zeros_like(flat, memory_format=torch.preserve_format))
            state["step"] = torch.tensor(float(step), dtype=torch.float32,
                                         device=flat.device if on_device else "cpu")
    link_optimizer_states(ds_optimizer)


@torch.no_grad()
def load_universal(engine, cfg, layout, directory: str, tag: str) -> dict:
    """Set this rank's weights and optimizer states from directory/tag; returns meta.pt
    (iteration, consumed samples/tokens, lr_scheduler, rng)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    from megatron.eval.checkpoint_loader import partition_specs, split_state_dict
    root = os.path.join(directory, tag, "universal")
    meta = torch.load(os.path.join(root, "meta.pt"), map_location="cpu", weights_only=False)
    _prepare_optimizer_states(engine.optimizer, meta["adam_step"])
    specs = partition_specs(cfg.model)
    params = named_gpt_parameters(engine.model, cfg)
    cache: dict[str, dict] = {}
    for name, p in params:
        block = block_of(name)
        if block not in cache:
            cache.clear()  # one block in memory at a time
            path = os.path.join(root, f"{block}.pt")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--load {directory}: {path} is missing")
            cache[block] = torch.load(path, map_location="cpu", weights_only=True)
        if name not in cache[block]:
            raise KeyError(f"--load {directory}: {name} is not in {block}.pt")
        spec = specs.get(name)
        rows = p.shape[0] * (layout.tp if spec and spec[0] == 0 else 1)
        for key in STATE_KEYS:
            full = _fit_rows(name, cache[block][name][key], rows)
            mine = split_state_dict({name: full}, specs, layout.tp)[layout.tp_rank][name]
            if mine.shape != p.shape:
                raise ValueError(f"--load {directory}: {name} {key} has shape "
                                 f"{tuple(mine.shape)} here, the model {tuple(p.shape)}")
            mine = mine.to(p.device)
            if key == "fp32":
                p.copy_(mine.to(p.dtype))
            if _uses_fragments(p):
                (safe_set_full_fp32_param(p, mine) if key == "fp32" else
                 safe_set_full_optimizer_state(p, mine, key))
            else:
                state = _base_optimizer(engine.optimizer).state[p]
                if key != "fp32":
                    state[key] = mine.to(state[key].dtype if key in state else mine.dtype, copy=True)
                elif "master" in state:
                    state["master"].copy_(mine)
    return meta


def write_meta(out_dir: str, client_state: dict, adam_step_count: int) -> None:
    keep = ("iteration", "consumed_samples", "consumed_tokens", "config", "rng", "lr_scheduler")
    torch.save(dict({k: client_state[k] for k in keep if k in client_state},
                    adam_step=adam_step_count),
               os.path.join(out_dir, "universal", "meta.pt"))


def find_universal_tag(directory: str, tag: Optional[str]) -> str:
    from megatron.trainer.checkpoint import read_latest
    tag = tag or read_latest(directory)
    if not tag or not os.path.isfile(os.path.join(directory, tag, "universal", "meta.pt")):
        raise FileNotFoundError(f"--universal-checkpoint --load {directory}: no universal "
                                f"checkpoint there (tools/checkpoint_to_universal.py writes one)")
    return tag
