"""A checkpoint's GPTModel ready for inference, on one process or TP ranks in lockstep.

    layout = init_eval_parallel()                   # TP = world size (torchrun) or 1 process
    runner = ModelRunner.from_checkpoint("ckpt", layout)
    if runner.is_driver:                            # global rank 0 does the work ...
        try:
            logits = runner.logits(tokens)          # (B, T) -> full-vocab fp32 (B, T, V)
        finally:
            runner.stop()
    else:
        runner.serve()                              # ... the other TP ranks follow its calls

Every model call on the driver is broadcast to the TP group (an int64 header, then its
tensors), so all ranks run the same forward; logits are all-gathered over the vocab shards.
With one process nothing is sent. The driver's results equal a single-process run up to the
order of floating-point sums in the TP all-reduces.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.config.schema import Config, ParallelConfig
from megatron.eval import checkpoint_loader as ckl
from megatron.model.attention import KVCache
from megatron.model.gpt import GPTModel
from megatron.parallel.launch import LaunchEnv, free_port
from megatron.parallel.layout import ParallelLayout, initialize_parallel

_STOP, _FORWARD, _CACHE_ON, _CACHE_OFF = range(4)


def init_eval_parallel() -> ParallelLayout:
    """TP over all launched processes (PP = DP = 1); a plain `python` run is TP = 1 on a fresh
    port (not a MASTER_PORT inherited from a parent process that is using it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launch = None if world > 1 else LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single")
    return initialize_parallel(ParallelConfig(tensor_model_parallel_size=world), launch)


def load_model(load_dir: str, layout: ParallelLayout, tag: Optional[str] = None,
               dtype: torch.dtype = torch.float32) -> tuple:
    """(GPTModel in eval mode holding this TP rank's weights, Config) from a checkpoint at any TP/PP.

    A checkpoint of the same TP size is read shard by shard; another is merged and re-split."""
    tag = ckl.resolve_tag(load_dir, tag)
    cfg = ckl.load_config(load_dir, tag)
    m = ckl.eval_model_config(cfg.model)
    if m.vocab_size % layout.tp:
        raise ValueError(f"--load {load_dir}: padded vocabulary {m.vocab_size} does not split over "
                         f"TP {layout.tp}; use a TP size that divides it")
    specs = ckl.partition_specs(m)
    if ckl.checkpoint_tp(load_dir, tag) == layout.tp:
        sd = ckl.read_shard(load_dir, tag, layout.tp_rank, m.num_layers)
    else:
        full = ckl.merge_shards(ckl.read_shards(load_dir, tag, m.num_layers), specs)
        sd = ckl.split_state_dict(full, specs, layout.tp)[layout.tp_rank]
    ckl.check_shapes(sd, specs, m, f"--load {load_dir} (tag {tag})")
    model = build_model(m, sd, dtype, layout.device)
    return model, cfg.replace(model={"hidden_dropout": 0.0, "attention_dropout": 0.0})


def build_model(model_cfg, state_dict: dict, dtype=torch.float32, device="cpu") -> GPTModel:
    """GPTModel for the current TP rank with `state_dict` (that rank's shard) loaded, eval mode."""
    with torch.random.fork_rng(devices=[]):  # construction draws init weights: keep ours
        model = GPTModel(model_cfg, params_dtype=dtype)
    try:
        model.load_state_dict({k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                               for k, v in state_dict.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights do not fit the model of its config.json: {e}") from e
    return model.to(device).eval()


class ModelRunner:
    def __init__(self, model: GPTModel, cfg: Config, layout: ParallelLayout):
        self.model, self.cfg, self.layout = model, cfg, layout
        self.device = layout.device
        self.group = parallel_state.get_tensor_model_parallel_group() if layout.tp > 1 else None
        self.src = dist.get_global_rank(self.group, 0) if self.group is not None else 0

    @classmethod
    def from_checkpoint(cls, load_dir: str, layout: ParallelLayout, tag: Optional[str] = None,
                        dtype: torch.dtype = torch.float32) -> "ModelRunner":
        model, cfg = load_model(load_dir, layout, tag, dtype)
        return cls(model, cfg, layout)

    @property
    def is_driver(self) -> bool:
        return self.layout.rank == 0

    @property
    def max_length(self) -> int:
        """Tokens per forward: the training sequence length."""
        return self.cfg.model.seq_length

    @property
    def vocab_size(self) -> int:
        return self.cfg.model.vocab_size

    # ---- driver calls (mirrored on the followers) ----
    def logits(self, tokens: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, T) int -> full-vocabulary logits (B, T, V) fp32 on the driver."""
        tokens = tokens.to(self.device, torch.int64)
        if position_ids is None:
            position_ids = torch.arange(tokens.shape[1], device=self.device).expand_as(tokens)
        self._send(_FORWARD, tokens, position_ids.to(self.device, torch.int64))
        return self._forward(tokens, position_ids)

    def use_kv_cache(self, on: bool) -> None:
        """Start with empty KV caches (on) or drop them (off) on every TP rank."""
        self._send(_CACHE_ON if on else _CACHE_OFF)
        self._set_cache(on)

    def stop(self) -> None:
        """Release the followers (their serve() returns)."""
        self._send(_STOP)

    # ---- followers ----
    def serve(self) -> None:
        """Run the driver's calls until it calls stop()."""
        while True:
            header = torch.zeros(3, dtype=torch.int64, device=self.device)
            dist.broadcast(header, self.src, group=self.group)
            op, B, T = header.tolist()
            if op == _STOP:
                return
            if op == _FORWARD:
                tokens = torch.empty(2, B, T, dtype=torch.int64, device=self.device)
                dist.broadcast(tokens, self.src, group=self.group)
                self._forward(tokens[0], tokens[1])
            else:
                self._set_cache(op == _CACHE_ON)

    # ---- both ----
    def _send(self, op: int, tokens=None, position_ids=None) -> None:
        if self.group is None:
            return
        B, T = tokens.shape if tokens is not None else (0, 0)
        dist.broadcast(torch.tensor([op, B, T], dtype=torch.int64, device=self.device), self.src,
                       group=self.group)
        if tokens is not None:
            dist.broadcast(torch.stack([tokens, position_ids]).contiguous(), self.src,
                           group=self.group)

    @torch.no_grad()
    def _forward(self, tokens, position_ids) -> torch.Tensor:
        local = self.model(tokens, position_ids=position_ids).float()  # (B, T, V / TP)
        if self.group is None:
            return local
        parts = [torch.empty_like(local) for _ in range(self.layout.tp)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)  # (B, T, V)

    def _set_cache(self, on: bool) -> None:
        for layer in self.model.layers:
            layer.attention.kv_cache = KVCache() if on else None


def drive(runner: ModelRunner, work):
    """work() on the driver, its result returned there (None on followers, which serve meanwhile)."""
    if not runner.is_driver:
        runner.serve()
        return None
    try:
        return work()
    finally:
        runner.stop()
