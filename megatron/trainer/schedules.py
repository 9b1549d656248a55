"""Learning-rate schedule counted in samples (megatron-core's OptimizerParamScheduler)."""
from __future__ import annotations

from megatron.config.schema import Config
from megatron.config.validate import schedule_samples


def build_lr_scheduler(optimizer, cfg: Config, gbs: int):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    _, warmup, decay = schedule_samples(cfg, gbs)
    o, t = cfg.optimizer, cfg.training
    wsd = t.lr_wsd_decay_samples or (t.lr_wsd_decay_iters or 0) * gbs or None
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=decay, lr_decay_style=cfg.training.lr_decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=decay,
        wd_incr_style="constant", wsd_decay_steps=wsd, lr_wsd_decay_style=t.lr_wsd_decay_style)
