"""Throughput, model FLOPs and MFU, log lines and TensorBoard.

Model FLOPs per token = 6 N + 12 L h s (N non-embedding-free parameter count incl. embeddings,
L layers, h hidden, s sequence: the attention score/value products), forward plus backward,
without recomputation; MFU = achieved model FLOP/s per GPU / the GPU's peak dense bf16 FLOP/s.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from megatron.config.schema import ModelConfig

# Peak dense bf16/fp16 tensor-core FLOP/s by device-name substring.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "V100": 125e12,
              "L40S": 362e12, "A10": 125e12}


def count_parameters(cfg: ModelConfig) -> int:
    """Full (unsharded) parameter count of the GPT described by cfg: exactly
    sum(p.numel() for p in GPTModel(cfg).parameters()) on one process (a tied output layer
    counted once; norms: LayerNorm weight + bias, RMSNorm weight only; --embed-layernorm's
    norm included)."""
    h, L, f = cfg.hidden_size, cfg.num_layers, cfg.ffn_size
    bias = 1 if cfg.add_bias_linear else 0
    attn = 4 * h * h + bias * 4 * h
    up = (2 if cfg.glu_activation else 1) * f
    mlp = h * up + f * h + bias * (up + h)
    norm = (2 if cfg.normalization == "LayerNorm" else 1) * h  # RMSNorm: a weight, no bias
    norms = (4 if cfg.sandwich_layernorm else 2) * norm
    emb = cfg.vocab_size * h * (2 if cfg.untie_embeddings_and_output_weights else 1)
    if cfg.position_embedding_type == "learned_absolute":
        emb += cfg.max_positions * h
    if cfg.embed_layernorm:
        emb += norm
    return L * (attn + mlp + norms) + emb + norm  # + the final norm


def flops_per_token(cfg: ModelConfig) -> float:
    return 6 * count_parameters(cfg) + 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_length


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class TensorBoard:
    """SummaryWriter on rank 0 only; a no-op elsewhere or without --tensorboard-dir."""

    def __init__(self, directory: Optional[str], enabled: bool):
        self.writer = None
        if directory and enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=directory)

    def scalars(self, values: dict, step: int, samples: int, tokens: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            self.writer.add_scalar(k, v, step)
            self.writer.add_scalar(f"{k} vs samples", v, samples)
            self.writer.add_scalar(f"{k} vs tokens", v, tokens)

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_log_line(values: dict) -> str:
    parts = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3E}" if k in ("lr", "grad norm", "params norm") else f"{v:.0f}" if abs(v) >= 100 \
                else f"{v:.4f}"
        parts.append(f"{k} {v}")
    return " | ".join(parts)
