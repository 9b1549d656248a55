"""TP-aware dropout randomness: one RNG stream per region.

- "replicated": activations that are identical on every TP rank (embeddings, residual stream).
  Same seed on all TP ranks (and for every TP size), so their dropout masks agree.
- "sharded": activations split across TP ranks (attention probabilities of this rank's heads).
  Seed differs per TP rank (seed + 2718 + tp_rank, megatron-core's convention).

On CUDA this delegates to megatron-core's RNG tracker (its "model-parallel-rng" state is the
sharded stream, the default CUDA generator the replicated one), so megatron-core's activation
checkpointing restores it. That tracker only forks CUDA generators, hence this CPU version,
which swaps the default CPU generator's state in and out the same way.
"""
from __future__ import annotations

import contextlib

import torch

SHARDED_SEED_OFFSET = 2718  # megatron-core's offset for the tensor-model-parallel stream


class DropoutRNG:
    """Forks the default generator into the "replicated" or "sharded" stream for a region."""

    def __init__(self, seed: int, tp_rank: int):
        self.use_cuda = torch.cuda.is_available()
        if self.use_cuda:
            from megatron.core.tensor_parallel import random as mcore_random
            tracker = mcore_random.get_cuda_rng_tracker()
            if not tracker.is_initialized():  # the trainer may have seeded it already
                mcore_random.model_parallel_cuda_manual_seed(seed, tp_rank=tp_rank)
            self._tracker = tracker
            self._states = {}
        else:
            self._states = {"replicated": _cpu_state(seed),
                            "sharded": _cpu_state(seed + SHARDED_SEED_OFFSET + tp_rank)}

    @contextlib.contextmanager
    def fork(self, region: str):
        if region not in ("replicated", "sharded"):
            raise ValueError(f"unknown RNG region {region!r}")
        if self.use_cuda:
            ctx = self._tracker.fork() if region == "sharded" else contextlib.nullcontext()
            with ctx:
                yield
            return
        outer = torch.get_rng_state()
        torch.set_rng_state(self._states[region])
        try:
            yield
        finally:
            self._states[region] = torch.get_rng_state()
            torch.set_rng_state(outer)

    def get_states(self) -> dict:
        """Both streams' generator states (for checkpoints)."""
        if self.use_cuda:
            return {"cuda_tracker": self._tracker.get_states()}
        return dict(self._states)

    def set_states(self, states: dict) -> None:
        if self.use_cuda:
            if "cuda_tracker" in states:
                self._tracker.set_states(states["cuda_tracker"])
            return
        self._states.update(states)


def _cpu_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def dropout(x: torch.Tensor, p: float, training: bool, rng: DropoutRNG, region: str):
    """F.dropout drawing from `region`'s stream; a no-op (no RNG use) when p == 0 or eval."""
    if p == 0.0 or not training:
        return x
    with rng.fork(region):
        return torch.nn.functional.dropout(x, p, training=True)


def checkpointed(fn, rng: DropoutRNG, *args):
    """fn(*args) with activation checkpointing: outputs kept, inner activations recomputed in
    backward with the dropout streams as they were in forward.

    torch's checkpoint (like megatron-core's tensor_parallel.checkpoint, which forks only CUDA
    generators) restores the default generators, but our dropout streams live in DropoutRNG (on
    CUDA in megatron-core's tracker); this saves and restores those around the recomputation.
    """
    if torch.compiler.is_compiling():
        # torch.compile cannot trace checkpoint's context_fn (torch 2.11: "checkpoint not
        # implemented for ... context_fn"): the checkpoint runs eagerly, between the layer's
        # compiled graphs
        return _checkpoint_eagerly(fn, rng, *args)
    return _checkpoint(fn, rng, *args)


def _checkpoint(fn, rng: DropoutRNG, *args):
    saved = _stream_states(rng)

    @contextlib.contextmanager
    def as_in_forward():
        now = _stream_states(rng)
        _set_stream_states(rng, saved)
        try:
            yield
        finally:
            _set_stream_states(rng, now)

    return torch.utils.checkpoint.checkpoint(
        fn, *args, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), as_in_forward()))


@torch.compiler.disable
def _checkpoint_eagerly(fn, rng: DropoutRNG, *args):
    return _checkpoint(fn, rng, *args)


def _stream_states(rng: DropoutRNG) -> dict:
    return rng._tracker.get_states() if rng.use_cuda else rng.get_states()


def _set_stream_states(rng: DropoutRNG, states: dict) -> None:
    (rng._tracker if rng.use_cuda else rng).set_states(states)
