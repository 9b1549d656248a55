"""Checkpoint contents beyond the engine's tensors: progress, config and RNG states."""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megatron.config.schema import Config


@dataclass
class Progress:
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0

    def advance(self, samples: int, seq_length: int) -> None:
        """One step (trained or skipped) that read `samples` samples."""
        self.iteration += 1
        self.consumed_samples += samples
        self.consumed_tokens += samples * seq_length


def step_tag(iteration: int) -> str:
    return f"global_step{iteration}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def client_state(cfg: Config, progress: Progress) -> dict:
    return {"iteration": progress.iteration, "consumed_samples": progress.consumed_samples,
            "consumed_tokens": progress.consumed_tokens, "config": cfg.to_dict(),
            "rng": rng_state()}


def progress_from(state: dict) -> Progress:
    return Progress(state["iteration"], state["consumed_samples"], state.get("consumed_tokens", 0))


def check_same_model(saved: dict, cfg: Config, directory: str, ignore: tuple = ()) -> None:
    """Refuse a checkpoint whose architecture differs from the flags, naming the fields."""
    saved_model = saved.get("config", {}).get("model", {})
    ours = cfg.to_dict()["model"]
    keys = [k for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                        "vocab_size", "position_embedding_type", "glu_activation",
                        "normalization", "add_bias_linear",
                        "untie_embeddings_and_output_weights") if k not in ignore]
    diff = [f"{k}: checkpoint {saved_model.get(k)!r} vs flags {ours[k]!r}" for k in keys
            if k in saved_model and saved_model[k] != ours[k]]
    if diff:
        raise CheckpointError(f"--load {directory}: checkpoint is of a different model: "
                         + "; ".join(diff))


def write_config_json(cfg: Config, directory: str, tag: str) -> None:
    path = os.path.join(directory, tag, "config.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, default=str)
    os.replace(path + ".tmp", path)


LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def read_latest(directory: str) -> Optional[str]:
    path = os.path.join(directory, LATEST)
    if not os.path.isfile(path):
        return None
    tag = open(path).read().strip()
    if not tag:
        raise CheckpointError(f"{path} is empty")
    return tag


def find_checkpoint(load_dir: str, save_dir: Optional[str]) -> Optional[str]:
    """The tag to resume from, or None to start fresh.

    A --load directory without a checkpoint starts fresh only when it is also the --save
    directory (the first run of a job that saves and resumes in one place); anywhere else it is
    an error, since a mistyped path would otherwise silently train from scratch."""
    tag = read_latest(load_dir)
    if tag is None:
        if save_dir and os.path.abspath(save_dir) == os.path.abspath(load_dir):
            return None
        raise CheckpointError(f"--load {load_dir}: no checkpoint there (no '{LATEST}' file); "
                              f"to start from scratch drop --load, or pass the same directory "
                              f"as --save")
    tag_dir = os.path.join(load_dir, tag)
    if not os.path.isdir(tag_dir):
        raise CheckpointError(f"--load {load_dir}: {LATEST} names {tag}, but {tag_dir} does "
                              f"not exist")
    return tag


def check_compatible(load_dir: str, tag: str, cfg: Config, ignore: tuple = ()) -> None:
    """Refuse, before loading any tensor, a checkpoint of a different model shape (fields in
    `ignore` may differ: a universal checkpoint refits the padded vocabulary)."""
    path = os.path.join(load_dir, tag, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: not a checkpoint written by pretrain_gpt.py, "
                              f"or an incomplete one")
    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from e
    check_same_model({"config": saved}, cfg, load_dir, ignore)


LAYOUT_FILE = "layout.json"


def check_same_layout(load_dir: str, tag: str, tp: int, pp: int, dp: Optional[int]) -> None:
    """Refuse a checkpoint saved at other TP/PP/DP sizes (DeepSpeed's files hold one layout's
    shards and ZeRO partitions), saying how to resume on this one. dp None: any DP (weights
    only, --no-load-optim)."""
    path = os.path.join(load_dir, tag, LAYOUT_FILE)
    if not os.path.isfile(path):  # written since layout checks exist; older: TP/PP from config
        with open(os.path.join(load_dir, tag, "config.json")) as f:
            par = json.load(f).get("parallel", {})
        saved = {"tp": par.get("tensor_model_parallel_size", tp),
                 "pp": par.get("pipeline_model_parallel_size", pp), "dp": dp}
    else:
        with open(path) as f:
            saved = json.load(f)
    if dp is None:
        dp = saved["dp"]
    if (saved["tp"], saved["pp"], saved["dp"]) != (tp, pp, dp):
        world = saved["tp"] * saved["pp"] * saved["dp"]
        raise CheckpointError(
            f"--load {load_dir}: {tag} was saved at TP {saved['tp']} x PP {saved['pp']} x DP "
            f"{saved['dp']}, this run is TP {tp} x PP {pp} x DP {dp}. To resume on this layout: "
            f"torchrun --nproc-per-node {world} tools/checkpoint_to_universal.py --load "
            f"{load_dir} --save <dir>, then --universal-checkpoint --load <dir>")


def save_checkpoint(engine, cfg: Config, progress: Progress, directory: str,
                    is_rank0: bool) -> str:
    """Write directory/<tag> so that a kill at any moment leaves the previous checkpoint
    loadable: every rank writes into <tag>.tmp, rank 0 adds config.json, renames the folder to
    <tag> and only then points `latest` at it (atomic renames)."""
    import torch.distributed as dist

    tag = step_tag(progress.iteration)
    tmp, final = os.path.join(directory, tag + ".tmp"), os.path.join(directory, tag)
    if is_rank0:
        os.makedirs(directory, exist_ok=True)
        if os.path.isdir(tmp):  # left by a save that was killed
            shutil.rmtree(tmp)
    dist.barrier()
    engine.save(directory, tag + ".tmp", client_state(cfg, progress))
    dist.barrier()
    if is_rank0:
        write_config_json(cfg, directory, tag + ".tmp")
        lay = engine.layout
        with open(os.path.join(tmp, LAYOUT_FILE), "w") as f:
            json.dump({"tp": lay.tp, "pp": lay.pp, "dp": lay.dp}, f)
        if os.path.isdir(final):  # the same step saved before (e.g. a rerun after a crash)
            shutil.rmtree(final)
        os.replace(tmp, final)
        with open(os.path.join(directory, LATEST + ".tmp"), "w") as f:
            f.write(tag)
        os.replace(os.path.join(directory, LATEST + ".tmp"), os.path.join(directory, LATEST))
    dist.barrier()
    return tag
