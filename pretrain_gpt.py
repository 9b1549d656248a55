"""Pretrain a GPT: flags -> config -> parallel layout -> data -> model -> DeepSpeed engine -> loop.

    python pretrain_gpt.py --num-layers 2 --hidden-size 64 ... (one process), or under torchrun,
    the deepspeed launcher or srun for TP x PP x DP ranks. `--help` lists every flag.
"""
from __future__ import annotations

import sys

import torch

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, global_batch_size, no_effect_warning, \
    validate_config
from megatron.data.gpt_datasets import SplitSizes, build_datasets, make_loader
from megatron.data.tokenizers import build_tokenizer, padded_vocab_size
from megatron.parallel.launch import resolve_launch_env
from megatron.parallel.layout import destroy_parallel, initialize_parallel
from megatron.trainer import checkpoint as ckpt
from megatron.trainer.batch_schedule import build_batch_calculator, train_iterations
from megatron.trainer.build_engine import build_engine
from megatron.trainer.loop import TrainData, Trainer, print_rank0
from megatron.trainer.schedules import schedule_samples


def resume(engine, cfg, layout) -> ckpt.Progress:
    c = cfg.checkpoint
    if cfg.training.universal_checkpoint:  # written by tools/checkpoint_to_universal.py
        from megatron.trainer.universal import find_universal_tag
        try:
            tag = find_universal_tag(c.load, None)
        except FileNotFoundError as e:
            raise ckpt.CheckpointError(str(e)) from e
        ckpt.check_compatible(c.load, tag, cfg, ignore=("vocab_size",))
        state = engine.load_universal(c.load, tag, cfg)
        ckpt.set_rng_state(state["rng"])
        progress = ckpt.progress_from(state)
        print_rank0(layout, f"resumed from universal checkpoint {c.load}/{tag}: iteration "
                            f"{progress.iteration}, {progress.consumed_samples} samples consumed")
        return progress
    tag = ckpt.find_checkpoint(c.load, c.save)
    if tag is None:
        print_rank0(layout, f"--load {c.load}: no checkpoint yet, starting from scratch")
        return ckpt.Progress()
    ckpt.check_compatible(c.load, tag, cfg)
    ckpt.check_same_layout(c.load, tag, layout.tp, layout.pp,
                           None if c.no_load_optim else layout.dp)
    state = engine.load(c.load, tag, load_optimizer=not c.no_load_optim,
                        load_rng=not c.no_load_rng)
    if not c.no_load_rng:
        ckpt.set_rng_state(state["rng"])
    progress = ckpt.progress_from(state)
    print_rank0(layout, f"resumed from {c.load}/{tag}: iteration {progress.iteration}, "
                        f"{progress.consumed_samples} samples consumed")
    return progress


def main(argv=None) -> Trainer:
    cfg = parse_config(argv)
    launch = resolve_launch_env()
    warning = no_effect_warning(cfg)
    if warning and launch.rank == 0:
        print(f"pretrain_gpt.py: warning: {warning}", file=sys.stderr, flush=True)
    if cfg.training.dry_run:  # plan only: no process group, no weights
        from megatron.trainer.dry_run import dry_run, vocab_for_dry_run
        sys.exit(dry_run(cfg, launch.world_size if launch.world_size > 1 else None,
                         vocab_for_dry_run(cfg)))
    try:
        validate_config(cfg, launch.world_size)
    except ConfigError as e:
        sys.exit(f"pretrain_gpt.py: error: {e}")
    layout = initialize_parallel(cfg.parallel, launch)
    print_rank0(layout, layout.describe())
    d, t = cfg.data, cfg.training
    tokenizer = build_tokenizer(d.tokenizer_type or "ByteLevelTokenizer",
                                tokenizer_model=d.tokenizer_model, vocab_file=d.vocab_file,
                                tokenizer_name_or_path=d.tokenizer_name_or_path,
                                merge_file=d.merge_file, vocab_size=d.vocab_size)
    m = cfg.model
    cfg = cfg.replace(model={"vocab_size": padded_vocab_size(
        tokenizer.vocab_size, m.make_vocab_size_divisible_by, layout.tp, m.pad_vocab_size_to)})

    torch.manual_seed(t.seed)  # same full weights on every rank and for every TP/PP size
    gbs = global_batch_size(cfg, layout.world_size)
    try:
        engine = build_engine(cfg, layout, gbs)  # GPTModel (PP = 1) or its pipeline stage
    except ConfigError as e:  # an option this machine cannot run (a GPU-only one on CPU)
        sys.exit(f"pretrain_gpt.py: error: {e}")
    model = engine.model
    progress = ckpt.Progress()
    if cfg.checkpoint.load:
        try:
            progress = resume(engine, cfg, layout)
        except ckpt.CheckpointError as e:
            sys.exit(f"pretrain_gpt.py: error: {e}")
    print_rank0(layout, f"model: {sum(p.numel() for p in model.parameters()):,} parameters on "
                        f"this rank; global batch {gbs}; vocab {cfg.model.vocab_size}")
    if engine.describe_optimizer():
        print_rank0(layout, f"optimizer: {engine.describe_optimizer()}")

    calc = build_batch_calculator(cfg, gbs, layout.dp, layout.rank)
    if t.train_iters is not None:
        total_iters, train_samples = t.train_iters, t.train_iters * gbs  # no rampup with iters
    else:
        total_iters, train_samples = train_iterations(calc, schedule_samples(cfg, gbs)[0])
    evals = (total_iters // t.eval_interval + 1) if t.eval_interval else 1
    sizes = SplitSizes(train_samples, evals * t.eval_iters * gbs, t.eval_iters * gbs)
    train_ds, valid_sets, test_sets = build_datasets(d, tokenizer, m.seq_length, t.seed, sizes)
    loader = lambda ds, consumed: make_loader(ds, consumed, t.micro_batch_size, layout.dp_rank,
                                              layout.dp, d.num_workers)
    fresh = lambda sets: [(name, lambda ds=ds: loader(ds, 0)) for name, ds in sets if ds]
    data = TrainData(train_loader=loader(train_ds, progress.consumed_samples),
                     valid_loaders=fresh(valid_sets), test_loaders=fresh(test_sets),
                     eod=tokenizer.eod)
    harness = None
    if t.eval_harness_tasks:
        from megatron.eval.periodic import PeriodicHarness
        try:
            harness = PeriodicHarness(cfg, layout, model, tokenizer)
        except ValueError as e:
            sys.exit(f"pretrain_gpt.py: error: {e}")
    trainer = Trainer(cfg, layout, engine, data, calc, total_iters, progress, harness)
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
    destroy_parallel()
