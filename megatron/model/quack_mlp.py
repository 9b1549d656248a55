"""The MLP with the activation inside the GEMMs' epilogues (`--mlp-kernel quack`).

quack (Tri Dao's CuTe-DSL kernels for Hopper and Blackwell; tested: `pip install
quack-kernels==0.6.4`) is optional: `--mlp-kernel torch`, the default, runs the same MLP with
torch's matmuls and activation kernels.

- forward: quack's fc1 GEMM adds the bias and applies the activation in its epilogue, writing
  the pre-activation (kept for the backward) and the activation (fc2's input);
- backward: quack's fc2 input-gradient GEMM multiplies by the activation's derivative in its
  epilogue and writes the activation again, for fc2's weight gradient;
- the other four GEMMs are torch's (cuBLAS): quack's untuned GEMMs ran slower.

So the activation and its derivative never run as kernels of their own (13 ms of the 1.3B
preset's 262 ms step on an H100), and the activation is not kept for the backward (6 GiB less
at that preset). torch's matmuls take no such epilogue, hence a library. Weights, biases and
state dicts are the MLP's own: only the kernels differ. Measured in docs/benchmarks.md.
"""
from __future__ import annotations

from typing import Optional

import torch

from megatron.model.hopper_kernels import unavailable_reason

TESTED_QUACK = "quack-kernels==0.6.4"  # with the nvidia-cutlass-dsl 4.6.2 it pins
# our --activation names -> quack's epilogue activations (same functions as torch's F.gelu)
QUACK_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_tanh": "gelu_tanh_approx"}
# tuned=False everywhere: quack's default tile configs. Its autotuner (tuned=True) had not
# finished tuning the 1.3B shapes' two GEMMs after 100 s (docs/benchmarks.md).


def quack_unavailable_reason() -> Optional[str]:
    """Why quack's MLP kernels cannot run on this machine, or None when they can."""
    return unavailable_reason("quack.epilogue.library", TESTED_QUACK)


class _ActMLP(torch.autograd.Function):
    """fc2(act(fc1(x))): quack runs the two GEMMs that touch the activation (fc1's forward with
    bias + activation in the epilogue; fc2's input gradient times act'(preact) in the
    epilogue); torch's matmuls (cuBLAS) run the other four, faster than quack's untuned GEMMs."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act: str):
        from quack.gemm_interface import gemm_act

        x2 = x.reshape(-1, x.shape[-1])  # (N, H)
        keep = any(ctx.needs_input_grad)
        # preact (N, F) is kept for the backward only; postact = act(preact) (N, F) feeds fc2
        preact, postact = gemm_act(x2, w1.t(), bias=b1, activation=act, store_preact=keep,
                                   tuned=False)
        out = torch.nn.functional.linear(postact, w2, b2)  # (N, H)
        ctx.save_for_backward(x2, w1, w2, preact)
        ctx.act, ctx.has_b1, ctx.has_b2 = act, b1 is not None, b2 is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dout):
        from quack.gemm_interface import gemm_dact

        x2, w1, w2, preact = ctx.saved_tensors
        dout2 = dout.reshape(-1, dout.shape[-1]).contiguous()  # (N, H)
        # dpreact = (dout @ W2) * act'(preact) (N, F); postact = act(preact) again, for dW2
        dpreact, postact = gemm_dact(dout2, w2, preact, activation=ctx.act, tuned=False)
        dw2 = dout2.t() @ postact  # (H, F)
        dx = dpreact @ w1  # (N, H)
        dw1 = dpreact.t() @ x2  # (F, H)
        db1 = dpreact.sum(0) if ctx.has_b1 else None
        db2 = dout2.sum(0) if ctx.has_b2 else None
        return dx.view(dout.shape[:-1] + (dx.shape[-1],)), dw1, db1, dw2, db2, None


def quack_mlp(x: torch.Tensor, fc1, fc2, activation: str) -> torch.Tensor:
    """fc2(act(fc1(x))) for one tensor-parallel rank: x (..., H) -> (..., H).

    `fc1`/`fc2` are the MLP's linear layers (weights (F, H) and (H, F), biases or None);
    `activation` is a key of QUACK_ACTIVATIONS."""
    return _ActMLP.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                         QUACK_ACTIVATIONS[activation])
