"""On a Hopper GPU with flash-attn-4 installed (skipped otherwise): --attention-kernel fa4
(megatron/model/fa4_attention.py) computes the attention that torch computes.

- Kernel level, bf16, in this process: the output and the packed QKV gradient against torch's
  SDPA in fp32 (nobody's code here), no less accurate than torch's own bf16 SDPA; eager and
  under torch.compile(fullgraph=True) (the custom ops keep the graph whole).
- Training through pretrain_gpt.py (a subprocess, as a user runs it; bf16, --torch-compile,
  rotary embeddings, so the rotated q/k are packed again, 2 micro-batches per step): every
  step's loss and the validation loss match a run with --attention-kernel sdpa; a third run
  adds --recompute-granularity selective (the kernel recomputed in backward). With 2 GPUs,
  the same at TP 2 and at PP 2 (torchrun).

Nothing runs the CuTe DSL inside a multiprocessing child (see test_quack_mlp_gpu.py)."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from cli_runner import ROOT, losses, run, validation_losses

if torch.cuda.is_available():
    from megatron.model.fa4_attention import fa4_unavailable_reason
    _WHY = fa4_unavailable_reason()
else:
    _WHY = "needs a CUDA GPU"
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))


def _sdpa(qkv, scale):
    """qkv (B, T, nh, 3, hs) -> (B, T, nh, hs) through torch's SDPA."""
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("head_dim", [64, 128])
def test_fa4_matches_sdpa(head_dim):
    from megatron.model.fa4_attention import fa4_causal_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    B, T, nh = 2, 384, 4
    scale = 1 / math.sqrt(head_dim)
    qkv0 = torch.randn(B, T, nh, 3, head_dim, device="cuda", generator=g)
    dy = torch.randn(B, T, nh, head_dim, device="cuda", generator=g)

    def fwd_bwd(fn, dtype):
        qkv = qkv0.to(dtype).clone().requires_grad_()  # a leaf of its own
        y = fn(qkv, scale)
        y.backward(dy.to(dtype))
        return y.detach(), qkv.grad

    ref = fwd_bwd(_sdpa, torch.float32)
    torch_bf16 = fwd_bwd(_sdpa, torch.bfloat16)
    compiled = torch.compile(lambda qkv, s: fa4_causal_attention(qkv, s) * 2, fullgraph=True)
    for name, fn, factor in [("eager", fa4_causal_attention, 1), ("compiled", compiled, 2)]:
        got = fwd_bwd(fn, torch.bfloat16)
        for what, a, b, base in zip(["output", "qkv grad"], got, ref, torch_bf16):
            assert a.dtype == torch.bfloat16 and a.shape == b.shape, (name, what)
            err, floor = _rel(a, b * factor), _rel(base, b)
            assert err < max(2 * floor, 5e-3), f"{name} {what}: {err:.3g} (torch bf16: {floor:.3g})"


def _train(nproc: int, *flags) -> str:
    """pretrain_gpt.py's log: bf16, --torch-compile, rotary embeddings (the rotated q and k are
    packed again), 2 micro-batches per step (on one GPU), 8 steps."""
    launch = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = launch + [
        "pretrain_gpt.py", "--num-layers", "2", "--hidden-size", "256",
        "--num-attention-heads", "4", "--seq-length", "256", "--micro-batch-size", "4",
        "--global-batch-size", "8", "--train-iters", "8", "--lr", "1e-3",
        "--lr-warmup-iters", "0", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--position-embedding-type", "rope", "--log-interval", "1", "--eval-interval", "8",
        "--eval-iters", "2", "--bf16", "--torch-compile", "--mock-data", "--tokenizer-type",
        "NullTokenizer", "--vocab-size", "1000",
        "--deepspeed_config", str(ROOT / "ds_configs/zero1_bf16.json"), *flags]
    return run(cmd, timeout=900).stdout


def _assert_same_training(out: dict, ref_name: str):
    ref = losses(out[ref_name])
    assert sorted(ref) == list(range(1, 9)) and ref[8] < ref[1]  # it trained
    v_ref = validation_losses(out[ref_name])[8]
    for name in out:
        got = losses(out[name])
        assert sorted(got) == sorted(ref), name
        for it in ref:
            assert abs(got[it] - ref[it]) < 1e-2, (name, it, got, ref)
        v = validation_losses(out[name])[8]
        assert abs(v - v_ref) < 1e-2 * v_ref, (name, v, v_ref)


def test_training_with_fa4_matches_sdpa():
    runs = {"sdpa": ["--attention-kernel", "sdpa"], "fa4": ["--attention-kernel", "fa4"],
            "fa4 selective": ["--attention-kernel", "fa4", "--recompute-granularity", "selective"]}
    _assert_same_training({name: _train(1, *flags) for name, flags in runs.items()}, "sdpa")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("parallel", ["--tensor-model-parallel-size", "--pipeline-model-parallel-size"])
def test_tp2_and_pp2_training_with_fa4_matches_sdpa(parallel):
    """TP 2: each rank attends over its own two heads; PP 2: a layer per stage."""
    out = {k: _train(2, parallel, "2", "--attention-kernel", k) for k in ("sdpa", "fa4")}
    _assert_same_training(out, "sdpa")
