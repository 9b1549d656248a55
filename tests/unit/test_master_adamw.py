"""--bf16-optimizer local (megatron/trainer/master_adamw.py) against torch's own AdamW on fp32
copies: the same masters after several steps with gradient accumulation, clipping and weight
decay groups; a non-finite step changes nothing; its state round-trips in fp32."""
import pytest
import torch

from megatron.trainer.master_adamw import MasterWeightAdamW

LR, BETAS, EPS, WD, CLIP = 1e-2, (0.9, 0.95), 1e-8, 0.1, 0.5


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 16), (16,), (4, 8), (8,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g).bfloat16()) for s in shapes]


def _groups(params):
    return [{"params": [p for p in params if p.ndim == 2], "weight_decay": WD},
            {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}]


def _optimizer(params, clip=CLIP):
    return MasterWeightAdamW(_groups(params), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                             clip_grad=clip, dp_size=1)


def _micro_grads(params, step, micro):
    g = torch.Generator().manual_seed(100 * step + micro)
    return [torch.randn(p.shape, generator=g).bfloat16() for p in params]


def _stepped(step=0):
    """(params, optimizer) after one step on step `step`'s gradients."""
    params = _params()
    opt = _optimizer(params)
    for p, g in zip(params, _micro_grads(params, step, 0)):
        p.grad = g
    opt.step()
    return params, opt


def test_steps_equal_torch_adamw_on_fp32_masters_with_accumulation_and_clipping():
    params = _params()
    opt = _optimizer(params)
    ref = [torch.nn.Parameter(p.detach().float()) for p in params]
    ref_opt = torch.optim.AdamW(_groups(ref), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    clipped = []
    for step in range(4):
        for r in ref:
            r.grad = torch.zeros_like(r)
        for micro in range(3):  # three micro-batches accumulate in fp32
            grads = _micro_grads(params, step, micro)
            for p, r, g in zip(params, ref, grads):
                p.grad = g.clone()
                r.grad += g.float()
            opt.fold_grads()
            assert all(p.grad is None for p in params)
        clipped.append(torch.nn.utils.clip_grad_norm_(ref, CLIP).item())
        ref_opt.step()
        opt.step()
        assert opt._global_grad_norm.item() == pytest.approx(clipped[-1], rel=1e-6)
        assert opt.found_inf.item() == 0.0
    assert min(clipped) > CLIP  # every step was clipped
    for p, r in zip(params, ref):
        master = opt.state[p]["master"]
        torch.testing.assert_close(master, r.detach(), rtol=1e-6, atol=1e-7)
        assert torch.equal(p.detach(), master.bfloat16())  # weights are the masters' casts
        assert p.main_grad is None


def test_weight_decay_only_on_its_group_and_no_clipping_when_off():
    params = _params()
    opt = _optimizer(params, clip=0.0)
    before = [opt.state[p]["master"].clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)  # only weight decay moves the masters
    opt.step()
    for p, b in zip(params, before):
        want = b * (1 - LR * WD) if p.ndim == 2 else b
        torch.testing.assert_close(opt.state[p]["master"], want)


def test_non_finite_gradient_skips_the_whole_step_on_the_device():
    params, opt = _stepped()
    saved = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    weights = [p.detach().clone() for p in params]
    for i, (p, g) in enumerate(zip(params, _micro_grads(params, 1, 0))):
        p.grad = g
        if i == 2:
            p.grad[0, 0] = float("nan")
    opt.step()
    assert opt.found_inf.item() == 1.0
    for p, w in zip(params, weights):
        assert torch.equal(p.detach(), w)
        for k, v in saved[id(p)].items():
            assert torch.equal(opt.state[p][k], v), k  # masters, moments, step count
    for p, g in zip(params, _micro_grads(params, 2, 0)):
        p.grad = g
    opt.step()
    assert opt.found_inf.item() == 0.0 and opt.state[params[0]]["step"].item() == 2.0


def test_state_dict_round_trip_keeps_fp32_and_refuses_another_optimizers_state():
    params, opt = _stepped()
    state = opt.state_dict()
    fresh_params = _params(seed=1)
    fresh = _optimizer(fresh_params)
    fresh.load_state_dict(state)
    for p, q in zip(params, fresh_params):
        for k, v in opt.state[p].items():
            assert fresh.state[q][k].dtype == torch.float32
            assert torch.equal(fresh.state[q][k], v), k
    plain = torch.optim.AdamW([torch.nn.Parameter(p.detach().float()) for p in params])
    with pytest.raises(ValueError, match="groups"):
        fresh.load_state_dict(plain.state_dict())
    torch_state = {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(1)}
                             for i in range(4)}, "param_groups": state["param_groups"]}
    with pytest.raises(ValueError, match="another optimizer"):
        fresh.load_state_dict(torch_state)


def test_refresh_takes_masters_from_loaded_weights():
    params = _params()
    opt = _optimizer(params)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    opt.refresh_fp32_params()
    for p in params:
        assert torch.equal(opt.state[p]["master"], p.detach().float())
