"""Learning-rate schedule counted in samples (megatron-core's OptimizerParamScheduler)."""
from __future__ import annotations

from megatron.config.schema import Config


def schedule_samples(cfg: Config, gbs: int) -> tuple[int, int, int]:
    """(train samples, warmup samples, decay samples) from the --train-*/--lr-* flags."""
    t = cfg.training
    train = t.train_samples if t.train_samples is not None else t.train_iters * gbs
    if t.lr_decay_samples is not None:
        decay = t.lr_decay_samples
    elif t.lr_decay_iters is not None:
        decay = t.lr_decay_iters * gbs
    else:
        decay = train
    if t.lr_warmup_fraction is not None:
        warmup = int(t.lr_warmup_fraction * decay)
    elif t.lr_warmup_samples:
        warmup = t.lr_warmup_samples
    else:
        warmup = t.lr_warmup_iters * gbs
    if warmup >= decay:
        raise ValueError(f"LR warmup ({warmup} samples) must be shorter than the decay period "
                         f"({decay} samples): check --lr-warmup-* and --lr-decay-*/--train-*")
    return train, warmup, decay


def build_lr_scheduler(optimizer, cfg: Config, gbs: int):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    _, warmup, decay = schedule_samples(cfg, gbs)
    o = cfg.optimizer
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=decay, lr_decay_style=cfg.training.lr_decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=decay,
        wd_incr_style="constant")
