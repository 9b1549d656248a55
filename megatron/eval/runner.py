"""A checkpoint's GPT ready for inference, on one process or TP x PP ranks in lockstep.

    layout = init_eval_parallel(tp, pp)             # TP x PP = world size (torchrun), or 1 process
    runner = ModelRunner.from_checkpoint("ckpt", layout)
    if runner.is_driver:                            # global rank 0 does the work ...
        try:
            logits = runner.logits(tokens)          # (B, T) -> full-vocab fp32 (B, T, V)
        finally:
            runner.stop()
    else:
        runner.serve()                              # ... the other ranks follow its calls

The protocol. Every call on the driver is broadcast over the model-parallel group (all TP x PP
ranks of the model): an int64 header [op, B, T], then for a forward the tokens and position ids
(2, B, T). Then each pipeline stage runs its blocks (megatron/eval/pipeline_stage.py): stage 0
embeds the tokens, stage s > 0 receives the hidden states (B, T, H) in the params dtype from the
same TP rank of stage s - 1 (dist.recv; the shape is known from the header), runs its layers and
sends them on to stage s + 1 (dist.send). The last stage's TP ranks all-gather their vocab shards
into fp32 logits (B, T, V), and its TP rank 0 sends them to the driver (TP rank 0 of stage 0).
KV-cache on/off is a header-only call: every rank sets the caches of the layers it holds. With
one process nothing is sent; with PP = 1 there are no sends. The driver's results equal a
single-process run up to the order of floating-point sums in the TP all-reduces.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.config.schema import Config, ParallelConfig
from megatron.eval.pipeline_stage import PipelineStage, load_stage
from megatron.model.attention import KVCache
from megatron.model.gpt import GPTModel
from megatron.parallel.launch import LaunchEnv, free_port
from megatron.parallel.layout import ParallelLayout, initialize_parallel

_STOP, _FORWARD, _CACHE_ON, _CACHE_OFF = range(4)


def add_parallel_flags(parser) -> None:
    """--tensor-model-parallel-size (default: world size / PP) and --pipeline-model-parallel-size."""
    g = parser.add_argument_group("model parallelism (launch TP x PP processes with torchrun)")
    g.add_argument("--tensor-model-parallel-size", type=int, default=None,
                   help="TP ranks per pipeline stage (default: world size / PP)")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="pipeline stages the layers are split over (default 1)")


def init_eval_parallel(tp: Optional[int] = None, pp: int = 1) -> ParallelLayout:
    """TP x PP over all launched processes (DP = 1); tp None: world size / pp. A plain `python`
    run is one process on a fresh port (not a MASTER_PORT inherited from a parent process that
    is using it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tp is None:
        if pp < 1 or world % pp:
            raise ValueError(f"--pipeline-model-parallel-size {pp} does not divide the {world} "
                             f"launched processes (WORLD_SIZE)")
        tp = world // pp
    if tp < 1 or pp < 1 or tp * pp != world:
        raise ValueError(f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp}"
                         f" = {tp * pp} ranks, but {world} processes were launched (WORLD_SIZE); "
                         f"launch TP x PP processes (torchrun --nproc-per-node {max(tp * pp, 1)})")
    launch = None if world > 1 else LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single")
    return initialize_parallel(ParallelConfig(tensor_model_parallel_size=tp,
                                              pipeline_model_parallel_size=pp), launch)


def build_model(model_cfg, state_dict: dict, dtype=torch.float32, device="cpu") -> GPTModel:
    """A whole GPTModel for the current TP rank with `state_dict` (that rank's shard) loaded, eval mode."""
    with torch.random.fork_rng(devices=[]):  # construction draws init weights: keep ours
        model = GPTModel(model_cfg, params_dtype=dtype)
    try:
        model.load_state_dict({k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                               for k, v in state_dict.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights do not fit the model of its config.json: {e}") from e
    return model.to(device).eval()


class ModelRunner:
    """The driver's model calls, mirrored on every rank of the model (see the module docstring).

    model: a PipelineStage (this rank's stage), or with PP = 1 a whole GPTModel (the live
    model of --eval-harness-tasks, tests)."""

    def __init__(self, model, cfg: Config, layout: ParallelLayout):
        if layout.pp > 1 and not isinstance(model, PipelineStage):
            raise ValueError(f"PP {layout.pp}: the runner needs this rank's PipelineStage, "
                             f"not a {type(model).__name__}")
        self.model, self.cfg, self.layout = model, cfg, layout
        self.device = layout.device
        self.dtype = next(model.parameters()).dtype  # of the hidden states between stages
        self._in_call = False  # the driver is inside a model call (set until it returns)
        parallel = layout.tp * layout.pp > 1
        self.group = parallel_state.get_model_parallel_group() if parallel else None
        self.src = dist.get_global_rank(self.group, 0) if parallel else 0  # the driver
        if layout.pp > 1:
            pp_group = parallel_state.get_pipeline_model_parallel_group()
            self.prev = parallel_state.get_pipeline_model_parallel_prev_rank()
            self.next = parallel_state.get_pipeline_model_parallel_next_rank()
            self.last = dist.get_global_rank(pp_group, layout.pp - 1)  # last stage, same TP rank

    @classmethod
    def from_checkpoint(cls, load_dir: str, layout: ParallelLayout, tag: Optional[str] = None,
                        dtype: torch.dtype = torch.float32) -> "ModelRunner":
        model, cfg = load_stage(load_dir, layout, tag, dtype)
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
        position_ids = position_ids.to(self.device, torch.int64)
        self._in_call = True
        self._send(_FORWARD, tokens, position_ids)
        logits = self._forward(tokens, position_ids)
        self._in_call = False
        return logits

    def use_kv_cache(self, on: bool) -> None:
        """Start with empty KV caches (on) or drop them (off) on every rank, for its layers."""
        self._send(_CACHE_ON if on else _CACHE_OFF)
        self._set_cache(on)

    def stop(self) -> None:
        """Release the followers (their serve() returns). Not after a call that raised midway:
        its followers may wait inside it (a send/recv), where a stop broadcast would wait for
        them forever; the launcher (torchrun, srun) ends them when this process exits."""
        if not self._in_call:
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
    def _forward(self, tokens, position_ids) -> Optional[torch.Tensor]:
        """tokens, position_ids (B, T) on every rank -> logits (B, T, V) fp32 on the driver (and
        the last stage's ranks); None on the other stages' ranks."""
        lay = self.layout
        x = tokens
        if not lay.is_first_stage:  # hidden states (B, T, H) from the previous stage
            x = torch.empty(*tokens.shape, self.cfg.model.hidden_size, dtype=self.dtype,
                            device=self.device)
            dist.recv(x, self.prev)
        out = self.model(x, position_ids=position_ids)
        if not lay.is_last_stage:
            dist.send(out.contiguous(), self.next)
            return self._receive_logits(tokens.shape) if self.is_driver else None
        logits = self._gather_vocab(out.float())  # (B, T, V)
        if lay.pp > 1 and lay.tp_rank == 0:
            dist.send(logits, self.src)
        return logits

    def _gather_vocab(self, local: torch.Tensor) -> torch.Tensor:
        """(B, T, V / TP) on each TP rank -> (B, T, V)."""
        if self.layout.tp == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.layout.tp)]
        dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        return torch.cat(parts, dim=-1)

    def _receive_logits(self, shape) -> torch.Tensor:
        logits = torch.empty(*shape, self.vocab_size, dtype=torch.float32, device=self.device)
        dist.recv(logits, self.last)
        return logits

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
