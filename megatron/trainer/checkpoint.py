"""Checkpoint contents beyond the engine's tensors: progress, config and RNG states."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from megatron.config.schema import Config


@dataclass
class Progress:
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0


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


def check_same_model(saved: dict, cfg: Config, directory: str) -> None:
    """Refuse a checkpoint whose architecture differs from the flags, naming the fields."""
    saved_model = saved.get("config", {}).get("model", {})
    ours = cfg.to_dict()["model"]
    keys = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
            "position_embedding_type", "glu_activation", "normalization", "add_bias_linear",
            "untie_embeddings_and_output_weights")
    diff = [f"{k}: checkpoint {saved_model.get(k)!r} vs flags {ours[k]!r}" for k in keys
            if k in saved_model and saved_model[k] != ours[k]]
    if diff:
        raise ValueError(f"--load {directory}: checkpoint is of a different model: "
                         + "; ".join(diff))


def write_config_json(cfg: Config, directory: str, tag: str) -> None:
    path = os.path.join(directory, tag, "config.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, default=str)
    os.replace(path + ".tmp", path)
