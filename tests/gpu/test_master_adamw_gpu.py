"""On a GPU (skipped without one): --bf16-optimizer local's one-pass Triton kernel (bf16 or
fp32 gradients in, fp32 masters and moments, bf16 weights out; the two large tensors get a
launch each, the small ones of a group share one) equals the torch path (fp32 gradient copies,
torch's fused AdamW, weight copy), with clipping, weight decay groups and a skipped non-finite
step. Steps alternate the bf16 gradients of one micro-batch and fp32 ones accumulated over
micro-batches; a non-contiguous bf16 gradient is first copied to fp32; a step without one
parameter's gradient and optimizer states replaced (as a checkpoint load does) rebuild the
shared launch's address tables. The step makes no host sync."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = [(4099, 1025), (333,), (4096, 1031), (8,), (3, 5)]


def _setup(seed):
    from megatron.trainer.master_adamw import MasterWeightAdamW
    g = torch.Generator().manual_seed(seed)
    # odd sizes cross block edges
    params = [torch.nn.Parameter(torch.randn(s, generator=g).bfloat16().cuda()) for s in SHAPES]
    groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]
    return params, MasterWeightAdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                                      weight_decay=0.1, clip_grad=50.0, dp_size=1)


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    grads = [(torch.randn(s, generator=g) * (3 if step % 2 else 0.01)).bfloat16().cuda()
             for s in SHAPES]
    if step == 3:
        grads[1][5] = float("inf")  # this step is skipped by both
    if step == 4:
        grads[4] = None  # no gradient for this parameter in this step
    return grads


def _given(i, grad):
    """A copy of grad as the parameter's .grad; the second parameter's is not contiguous."""
    if grad is None:
        return None
    return torch.stack([grad, grad], -1)[..., 0] if i == 1 else grad.clone()


def test_one_pass_kernel_equals_the_torch_path():
    from megatron.trainer import adamw_bf16_kernel
    if not adamw_bf16_kernel.available():
        pytest.skip("no Triton")
    fast_params, fast = _setup(0)
    ref_params, ref = _setup(0)
    ref.use_kernel = False  # the torch path
    for step in range(7):
        for i, (p, q, gr) in enumerate(zip(fast_params, ref_params, _grads(step))):
            p.grad, q.grad = _given(i, gr), _given(i, gr)
        if step % 2 == 0:  # as after an earlier micro-batch: fp32 main_grads in
            fast.fold_grads()
        grads = fast._final_grads()
        assert all(fast._kernel_takes(p, grads[id(p)]) for p in fast_params if id(p) in grads)
        assert {g.dtype for g in grads.values()} == \
            ({torch.float32} if step % 2 == 0 else {torch.float32, torch.bfloat16})
        assert not any(ref._kernel_takes(p, p.grad) for p in ref_params)
        if step == 5:  # a checkpoint load puts new state tensors in place
            for p in fast_params:
                fast.state[p] = {k: v.clone() for k, v in fast.state[p].items()}
        fast.step()
        ref.step()
        assert fast.found_inf.item() == ref.found_inf.item() == float(step == 3)
        torch.testing.assert_close(fast._global_grad_norm, ref._global_grad_norm, rtol=1e-5,
                                   atol=0, equal_nan=True)
        for p, q in zip(fast_params, ref_params):
            for key in ("master", "exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(fast.state[p][key], ref.state[q][key], rtol=1e-5,
                                           atol=1e-7)
            assert torch.equal(p.detach(), fast.state[p]["master"].bfloat16())
            assert p.grad is None and p.main_grad is None
    assert fast.state[fast_params[0]]["step"].item() == 6.0  # seven steps, one skipped
    assert fast.state[fast_params[4]]["step"].item() == 5.0  # and one without its gradient


def test_step_makes_no_host_sync():
    """The host must not wait for the device in a step (the loop queues the next step's
    forward meanwhile): torch's sync debug mode raises on .item() and other synchronizing
    calls."""
    from megatron.trainer import adamw_bf16_kernel
    if not adamw_bf16_kernel.available():
        pytest.skip("no Triton")
    params, opt = _setup(0)
    for step in range(3):
        for i, (p, gr) in enumerate(zip(params, _grads(step))):
            p.grad = _given(i, gr)
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.state[params[0]]["step"].item() == 3.0
