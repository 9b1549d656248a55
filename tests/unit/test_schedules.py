import math

import pytest
import torch

from megatron.config.cli import parse_config
from megatron.trainer.ds_config import build_deepspeed_config
from megatron.trainer.optimizer import build_optimizer, param_groups
from megatron.trainer.schedules import build_lr_scheduler, schedule_samples


def test_schedule_in_samples_from_iters():
    cfg = parse_config(["--train-iters", "100", "--lr-warmup-iters", "10"])
    assert schedule_samples(cfg, gbs=8) == (800, 80, 800)
    cfg = parse_config(["--train-samples", "1000", "--lr-warmup-fraction", "0.1",
                        "--lr-decay-samples", "500"])
    assert schedule_samples(cfg, gbs=8) == (1000, 50, 500)


def test_warmup_longer_than_decay_is_an_error():
    cfg = parse_config(["--train-iters", "10", "--lr-warmup-iters", "10"])
    with pytest.raises(ValueError, match="warmup"):
        schedule_samples(cfg, gbs=1)


def test_token_lengths_become_samples():
    cfg = parse_config(["--train-samples", "1000", "--seq-length", "128",
                        "--lr-decay-tokens", "64000", "--lr-warmup-tokens", "1300"])
    assert schedule_samples(cfg, gbs=8) == (1000, 11, 500)  # ceil(1300 / 128) = 11


def _lrs(flags, steps, gbs=1):
    cfg = parse_config(flags)
    sched = build_lr_scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg.optimizer), cfg, gbs)
    out = []
    for _ in range(steps):
        sched.step(gbs)
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out


def test_warmup_stable_decay():
    lrs = _lrs(["--train-iters", "100", "--lr", "1.0", "--min-lr", "0.0", "--lr-warmup-iters",
                "10", "--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "20",
                "--lr-wsd-decay-style", "linear"], 100)
    assert lrs[9] == 1.0 and lrs[79] == 1.0             # stable until step 80
    assert lrs[89] == pytest.approx(0.5)                # halfway through the final decay
    assert lrs[99] == pytest.approx(0.0)


def test_wsd_needs_its_decay_length():
    from megatron.config.validate import ConfigError
    cfg = parse_config(["--train-iters", "100", "--lr-decay-style", "WSD"])
    with pytest.raises(ConfigError, match="--lr-wsd-decay-samples"):
        schedule_samples(cfg, gbs=1)


def test_cosine_with_warmup_values():
    cfg = parse_config(["--train-iters", "100", "--lr-warmup-iters", "10", "--lr", "1e-3",
                        "--min-lr", "1e-4", "--lr-decay-style", "cosine"])
    model = torch.nn.Linear(4, 4)
    sched = build_lr_scheduler(build_optimizer(model, cfg.optimizer), cfg, gbs=2)
    lrs = []
    for _ in range(100):
        sched.step(2)
        lrs.append(sched.optimizer.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(5e-4)          # 10 of 20 warmup samples
    assert lrs[9] == pytest.approx(1e-3)          # end of warmup
    ratio = (60 - 20) / (200 - 20)                # step 30 = 60 samples
    assert lrs[29] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * 9e-4)
    assert lrs[-1] == pytest.approx(1e-4)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model)
    decay, no_decay = groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["wd_mult"] == 0.0
    opt = build_optimizer(model, parse_config(["--weight-decay", "0.1"]).optimizer)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_deepspeed_config_filled_from_flags(tmp_path):
    cfg = parse_config(["--train-iters", "1", "--micro-batch-size", "2",
                        "--global-batch-size", "16", "--clip-grad", "0.5", "--bf16",
                        "--deepspeed_config", "ds_configs/zero1_bf16.json"])
    ds = build_deepspeed_config(cfg, world_size=4)  # DP 4
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 1
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    cfg = parse_config(["--train-iters", "1", "--zero-stage", "2"])
    assert build_deepspeed_config(cfg, 1)["zero_optimization"]["stage"] == 2


def test_deepspeed_config_with_optimizer_section_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"optimizer": {"type": "Adam", "params": {"lr": 0.1}}}')
    cfg = parse_config(["--train-iters", "1", "--deepspeed_config", str(path)])
    with pytest.raises(ValueError, match="remove the 'optimizer' section"):
        build_deepspeed_config(cfg, 1)
