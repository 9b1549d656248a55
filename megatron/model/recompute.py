"""Selective activation recomputation (Megatron-LM's `--recompute-granularity selective`):
recompute only the attention core (scores, softmax, dropout) in backward, the part whose
activations grow with the square of the sequence length in the eager kernel. Applied from
outside the model, to a GPTModel or a pipeline module alike."""
from __future__ import annotations

from torch import nn

from megatron.model.attention import SelfAttention


def enable_selective_recompute(model: nn.Module) -> int:
    """Mark every attention module inside `model`; returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.recompute_core = True
            n += 1
    return n
