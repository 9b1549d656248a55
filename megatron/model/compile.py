"""Regional compilation: torch.compile each transformer layer in place.

Compiling the repeated block rather than the whole model keeps compile time to one layer's
(the layers share code, and torch inlines nn.Module calls so instances do not recompile),
leaves parameter names and state dicts unchanged (`Module.compile` compiles forward in place,
no `_orig_mod.` wrapper), and lets tensor-parallel collectives and pipeline stages stay
outside the graphs.
"""
from __future__ import annotations

from torch import nn

from megatron.model.layer import TransformerLayer


def compile_layers(model: nn.Module, **compile_kwargs) -> int:
    """Compile every TransformerLayer inside `model` (a GPTModel or a pipeline module); a
    layer with a `compile_core` method (a pipeline wrapper) compiles only its layer."""
    n = 0
    for module in model.modules():
        if isinstance(module, TransformerLayer):
            if hasattr(module, "compile_core"):
                module.compile_core(**compile_kwargs)
            else:
                module.compile(**compile_kwargs)
            n += 1
    return n
