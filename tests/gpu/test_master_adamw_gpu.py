"""On a GPU (skipped without one): --bf16-optimizer local's one-pass Triton kernel (bf16
gradients in, fp32 masters and moments, bf16 weights out) equals the torch path (fp32 gradient
copies, torch's fused AdamW, weight copy), with clipping, weight decay groups and a skipped
non-finite step; tensors under its size threshold take the torch path in the same step."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _setup(seed):
    from megatron.trainer.master_adamw import MasterWeightAdamW
    g = torch.Generator().manual_seed(seed)
    # odd sizes cross block edges; the 1-D ones go through the torch path in the same step
    shapes = [(4099, 1025), (333,), (4096, 1031), (8,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g).bfloat16().cuda()) for s in shapes]
    groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]
    return params, MasterWeightAdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                                      weight_decay=0.1, clip_grad=50.0, dp_size=1)


def test_one_pass_kernel_equals_the_torch_path():
    from megatron.trainer import adamw_bf16_kernel
    if not adamw_bf16_kernel.available():
        pytest.skip("no Triton")
    fast_params, fast = _setup(0)
    ref_params, ref = _setup(0)
    for step in range(5):
        g = torch.Generator().manual_seed(100 + step)
        grads = [(torch.randn(p.shape, generator=g) * (3 if step % 2 else 0.01)).bfloat16().cuda()
                 for p in fast_params]
        if step == 3:
            grads[1][5] = float("inf")  # this step is skipped by both
        for p, q, gr in zip(fast_params, ref_params, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        ref.fold_grads()  # a main_grad: the torch path
        assert [p.shape for p in fast._one_pass()] == [(4099, 1025), (4096, 1031)]
        assert not ref._one_pass()
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
    assert fast.state[fast_params[0]]["step"].item() == 4.0  # five steps, one skipped
