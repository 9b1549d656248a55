"""--enable-cuda-graph: each transformer layer's forward and backward are captured once as CUDA
graphs (torch.cuda.make_graphed_callables) and replayed for every training micro-batch.

Why: a replay launches all of a layer's kernels in one call. Without graphs the host launches
each kernel of each layer, with Python around every compiled region; a small model's GPU work
can then finish before the host has queued it. The 124M preset on an H200 machine ran at 369k
tokens/s as launched and 496k as graphs (docs/benchmarks.md).

Per layer, not the whole stack: each layer's weight gradients exist when its backward graph
ends, so the data-parallel all-reduce hooks (grad_reducer.py) still overlap with the rest of
the backward.

Capture happens at the first training forward, after DeepSpeed and the optimizer have cast the
weights: a graph holds the addresses of the parameters it read, so parameters must be updated
in place from then on (optimizers and checkpoint loading do). Graphs replay only in training
mode with gradients enabled and for inputs of the captured shapes; anything else (evaluation,
generation, another shape) runs the layers as usual.

Inputs: the residual stream and the position ids, plus whichever of the prefix lengths, the
document ids and the rotary tables the batch has. FlexAttention block masks are built inside
each layer's graph from them (a BlockMask is not a tensor, so it cannot be a graph input).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn


class _LayerCall(nn.Module):
    """One layer with tensor-only arguments, as make_graphed_callables needs them:
    (h, position_ids, *extras), extras named by `names` in that order."""

    def __init__(self, layer: nn.Module, names: tuple):
        super().__init__()
        self.layer = layer
        self.names = names

    def forward(self, h, position_ids, *extras):
        kw = dict(zip(self.names, extras))
        rotary = (kw["cos"], kw["sin"]) if "cos" in kw else None
        return self.layer(h, position_ids, kw.get("prefix_lengths"), kw.get("document_ids"),
                          None, rotary)


def _signature(args: tuple) -> tuple:
    return tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args)


class LayerGraphs:
    """Replays the captured layers: `graphs(h, position_ids, ...)` -> h, or None where these
    inputs cannot replay (the caller then runs the layers itself)."""

    def __init__(self, layers, warmup_iters: int = 3):
        self.layers = list(layers)
        self.warmup_iters = warmup_iters
        self._graphed = None  # the _LayerCall modules, their forwards replaying graphs
        self._key = None  # (names, signature) of the captured inputs
        self._mismatch_warned = False
        self._params = []  # the graphed layers' parameters

    @property
    def captured(self) -> bool:
        return self._graphed is not None

    def __call__(self, h, position_ids, prefix_lengths=None, document_ids=None,
                 rotary=None) -> Optional[torch.Tensor]:
        named = {"prefix_lengths": prefix_lengths, "document_ids": document_ids}
        if rotary is not None:
            named.update(cos=rotary[0], sin=rotary[1])
        names = tuple(n for n, v in named.items() if v is not None)
        args = (h, position_ids, *(named[n] for n in names))
        key = (names, _signature(args))
        if self._graphed is None:
            self._capture(names, args)
            self._key = key
        elif key != self._key:
            if not self._mismatch_warned:
                warnings.warn(f"--enable-cuda-graph: the layers were captured for inputs "
                              f"{self._key} and now get {key}; these run without graphs")
                self._mismatch_warned = True
            return None
        self._move_held_grads()
        for call in self._graphed:
            h = call(h, *args[1:])  # (B, T, H)
        return h

    def _move_held_grads(self) -> None:
        """A backward replay writes the weight gradients into buffers of the graphs' memory,
        and autograd keeps such a buffer as `.grad` where `.grad` was None. The next forward
        replay reuses that memory for its temporaries. So a `.grad` still held when the next
        micro-batch starts (gradients accumulating in `.grad`) is copied out first. Our bf16
        optimizer folds every `.grad` after each backward: nothing to copy there; fp32 at
        ZeRO 0, where DeepSpeed's engine accumulates in `.grad`, pays one copy per
        micro-batch."""
        for p in self._params:
            if p.grad is not None:
                p.grad = p.grad.clone()

    def _capture(self, names: tuple, args: tuple) -> None:
        calls = tuple(_LayerCall(layer, names) for layer in self.layers)
        # every layer gets its own static inputs, which each replay copies the real ones into
        samples = tuple(tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
                        for _ in calls)
        # make_graphed_callables runs its warm-up and captures on a side stream, where the
        # weights' gradient-accumulation nodes are made; autograd orders their work against the
        # replays' stream itself, and would otherwise warn about it at every run's first step
        # (torch versions before this warning have no switch for it)
        quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
        if quiet is not None:
            quiet(False)
        self._graphed = torch.cuda.make_graphed_callables(
            calls, samples, num_warmup_iters=self.warmup_iters, allow_unused_input=True)
        self._params = [p for call in calls for p in call.parameters()]
