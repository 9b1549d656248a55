"""Tensor-parallel MLP: fc1 (column parallel) -> activation / GLU -> fc2 (row parallel).

With a GLU the fused fc1 output is [gate | up] (megatron-core's order: the first half goes
through the activation). It is created with stride 2, so each TP rank holds the matching
slices of both halves: rank r gets [gate_r | up_r].
"""
from __future__ import annotations

import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.model.linear import ColumnLinear, RowLinear
from torch import nn

from megatron.model.init import normal_init, scaled_normal_init
from megatron.model.quack_mlp import quack_mlp

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
GLU_ACTIVATIONS = {
    "geglu": F.gelu,
    "swiglu": F.silu,
    "reglu": F.relu,
    "liglu": lambda x: x,
}


class MLP(nn.Module):
    def __init__(self, cfg, mp_config):
        super().__init__()
        self.glu = cfg.glu_activation
        # quack's fused GEMM + activation kernels (quack_mlp.py); validate.py allows them only
        # without a GLU, at TP 1
        self.quack_activation = cfg.activation if cfg.mlp_kernel == "quack" else None
        self.act = GLU_ACTIVATIONS[self.glu] if self.glu else ACTIVATIONS[cfg.activation]
        H, F_ = cfg.hidden_size, cfg.ffn_size
        n_fc1 = 2 if self.glu else 1
        tp_group = parallel_state.get_tensor_model_parallel_group()
        self.fc1 = ColumnLinear(H, n_fc1 * F_, config=mp_config, tp_group=tp_group,
                                        bias=cfg.add_bias_linear,
                                        init_method=normal_init(cfg.init_method_std),
                                        gather_output=False, stride=n_fc1)
        self.fc2 = RowLinear(F_, H, config=mp_config, tp_group=tp_group,
                                     bias=cfg.add_bias_linear,
                                     init_method=scaled_normal_init(cfg.init_method_std,
                                                                    cfg.num_layers),
                                     input_is_parallel=True, skip_bias_add=False)

    def forward(self, x):  # (B, T, H) -> (B, T, H)
        if self.quack_activation is not None:
            return quack_mlp(x, self.fc1, self.fc2, self.quack_activation)
        h, _ = self.fc1(x)  # (B, T, n_fc1 * ffn / TP)
        if self.glu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        out, _ = self.fc2(h)
        return out
