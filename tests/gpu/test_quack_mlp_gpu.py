"""On a Hopper GPU with quack installed (skipped otherwise): --mlp-kernel quack
(megatron/model/quack_mlp.py) computes the MLP that torch computes.

- Kernel level, bf16, in this process: output and the gradients of input, weights and biases
  against torch's F.linear and F.gelu (nobody's code here) on the same weights, for the exact
  (erf) GeLU and --openai-gelu's tanh form, and the no-grad forward.
- Training through pretrain_gpt.py (a subprocess, as a user runs it; bf16, --torch-compile,
  2 micro-batches per step): the losses of every step and the validation loss match a run
  with --mlp-kernel torch from the same seed.

Neither runs quack inside a multiprocessing (daemonic) child: a first version of this file
that did (tests/distributed.py's run_on_ranks) printed nothing for 210 s on the GPU machine."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from cli_runner import ROOT, losses, run, validation_losses

if torch.cuda.is_available():
    from megatron.model.quack_mlp import quack_unavailable_reason
    _WHY = quack_unavailable_reason()
else:
    _WHY = "needs a CUDA GPU"
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))


def _torch_mlp(x, fc1, fc2, activation):
    act = (lambda h: F.gelu(h, approximate="tanh")) if activation == "gelu_tanh" else F.gelu
    return F.linear(act(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


def _layer(out_f, in_f, g):
    w = (torch.randn(out_f, in_f, generator=g) * 0.05).to("cuda", torch.bfloat16)
    b = (torch.randn(out_f, generator=g) * 0.05).to("cuda", torch.bfloat16)
    return types.SimpleNamespace(weight=w.requires_grad_(), bias=b.requires_grad_())


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_quack_mlp_matches_torch(activation):
    from megatron.model.quack_mlp import quack_mlp

    g = torch.Generator().manual_seed(0)
    H, FF = 256, 1024
    fc1, fc2 = _layer(FF, H, g), _layer(H, FF, g)
    x0 = torch.randn(4, 128, H, generator=g).to("cuda", torch.bfloat16)
    dy = torch.randn(4, 128, H, generator=g).to("cuda", torch.bfloat16)
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias]

    def run_mlp(fn):
        x = x0.clone().requires_grad_()
        for p in params:
            p.grad = None
        y = fn(x, fc1, fc2, activation)
        y.backward(dy)
        return [y.detach(), x.grad] + [p.grad for p in params]

    ref, got = run_mlp(_torch_mlp), run_mlp(quack_mlp)
    names = ["output", "input grad", "fc1 weight grad", "fc1 bias grad", "fc2 weight grad",
             "fc2 bias grad"]
    for name, a, b in zip(names, got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert err < 1e-2, f"{activation} {name}: relative error {err:.3g}"
    with torch.no_grad():  # inference: fc1 stores no pre-activation
        y = quack_mlp(x0, fc1, fc2, activation)
    torch.testing.assert_close(y, got[0], rtol=0, atol=0)


def test_training_with_quack_mlp_matches_torch(tmp_path):
    base = [sys.executable, "pretrain_gpt.py", "--num-layers", "2", "--hidden-size", "256",
            "--num-attention-heads", "4", "--seq-length", "256", "--micro-batch-size", "4",
            "--global-batch-size", "8", "--train-iters", "8", "--lr", "1e-3",
            "--lr-warmup-iters", "0", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--log-interval", "1", "--eval-interval", "8", "--eval-iters", "2", "--bf16",
            "--torch-compile", "--mock-data", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "1000", "--deepspeed_config", str(ROOT / "ds_configs/zero1_bf16.json")]
    out = {k: run(base + ["--mlp-kernel", k], timeout=900).stdout for k in ("torch", "quack")}
    got, ref = losses(out["quack"]), losses(out["torch"])
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    assert ref[8] < ref[1]  # it trained
    for it in ref:
        assert abs(got[it] - ref[it]) < 1e-2, (it, got, ref)
    v = [validation_losses(out[k])[8] for k in ("torch", "quack")]
    assert abs(v[0] - v[1]) < 1e-2 * v[0], v
