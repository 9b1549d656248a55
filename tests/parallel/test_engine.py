"""The DeepSpeed engine against plain torch: same updates, also when the number of micro-batches
per step changes (batch-size rampup)."""
import pytest

from distributed import run_on_ranks


def _compare_with_torch(rank, world_size, accum_schedule, zero_stage):
    import torch

    from megatron.config.cli import parse_config
    from megatron.data.batch import Batch
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine

    mbs, T, V = 2, 16, 128
    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", str(T), "--micro-batch-size", str(mbs),
                        "--global-batch-size", str(mbs * max(accum_schedule)),
                        "--train-iters", "10", "--lr", "1e-2", "--lr-decay-style", "constant",
                        "--clip-grad", "0.05", "--weight-decay", "0.1", "--zero-stage",
                        str(zero_stage), "--hidden-dropout", "0", "--attention-dropout", "0",
                        "--mock-data"])
    cfg = cfg.replace(model={"vocab_size": V})
    layout = initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    model = GPTModel(cfg.model)
    torch.manual_seed(0)
    ref = GPTModel(cfg.model)  # the same weights: init depends only on the seed
    engine = DeepSpeedTrainEngine(model, cfg, layout, mbs * max(accum_schedule))
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    no_decay = [p for p in ref.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for accum in accum_schedule:
        micro = []
        for _ in range(accum):
            tokens = torch.randint(0, V, (mbs, T), generator=gen)
            micro.append(Batch(tokens=tokens, labels=torch.roll(tokens, -1, 1),
                               loss_mask=torch.ones(mbs, T), position_ids=torch.arange(T)
                               .expand(mbs, T)))
        engine.set_global_batch_size(mbs * accum)
        result = engine.train_step(micro, mbs * accum)
        opt.zero_grad()
        total = 0.0
        for b in micro:
            loss = ref.loss(ref(b.tokens, position_ids=b.position_ids), b.labels, b.loss_mask)
            (loss / accum).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        opt.step()
        losses.append((result.loss, total / accum))
    diffs = [(n, (p - q).abs().max().item()) for (n, p), q in
             zip(model.named_parameters(), ref.parameters())]
    return losses, max(d for _, d in diffs)


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_engine_updates_equal_plain_torch_with_changing_accumulation(zero_stage):
    [(losses, max_diff)] = run_on_ranks(_compare_with_torch, 1, args=([2, 4, 1, 3], zero_stage),
                                        timeout=300)
    for ours, ref in losses:
        assert ours == pytest.approx(ref, rel=1e-5)
    assert max_diff < 1e-5


def _tiny_engine(world_size, zero_stage, extra=()):
    """(engine, model) of a 1-layer GPT, 2 micro-batches of 2 x 8 tokens per DP rank a step."""
    import torch

    from megatron.config.cli import parse_config
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine

    mbs, T, V = 2, 8, 128
    cfg = parse_config(["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", str(T), "--micro-batch-size", str(mbs),
                        "--global-batch-size", str(2 * mbs * world_size), "--train-iters", "9",
                        "--zero-stage", str(zero_stage), "--mock-data", *extra])
    cfg = cfg.replace(model={"vocab_size": V})
    layout = initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    model = GPTModel(cfg.model)
    engine = DeepSpeedTrainEngine(model, cfg, layout, 2 * mbs * world_size)
    return engine, model


def _nan_step_is_skipped(rank, world_size, zero_stage, extra):
    import torch

    from megatron.data.batch import Batch

    mbs, T, V = 2, 8, 128
    engine, model = _tiny_engine(world_size, zero_stage, extra)
    tokens = torch.randint(0, V, (mbs, T), generator=torch.Generator().manual_seed(rank))
    good = Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T), torch.arange(T)
                 .expand(mbs, T))
    poisoned = Batch(good.tokens, good.labels, good.loss_mask.clone(), good.position_ids)
    if rank == world_size - 1:
        poisoned.loss_mask[0, 0] = float("nan")  # a NaN loss on one rank only
    engine.train_step([good, good], 2 * mbs * world_size)
    before = [p.detach().clone() for p in model.parameters()]
    lr_before = engine.current_lr()
    result = engine.train_step([good, poisoned], 2 * mbs * world_size)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = engine.train_step([good, good], 2 * mbs * world_size)  # training goes on
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return result.skipped, unchanged, engine.current_lr() != lr_before, lr_before == \
        result.lr, after.skipped, finite


@pytest.mark.parametrize("zero_stage, extra", [
    (0, ()), (1, ()), (0, ("--bf16", "--bf16-optimizer", "local"))])
def test_non_finite_step_is_skipped_on_every_rank(zero_stage, extra):
    for skipped, unchanged, lr_moved_later, lr_held, next_skipped, finite in run_on_ranks(
            _nan_step_is_skipped, 2, args=(zero_stage, extra), timeout=300):
        assert skipped and unchanged and lr_held
        assert not next_skipped and lr_moved_later and finite


def _layer_grad_norms(rank, world_size, ds_config, bf16):
    import torch

    from megatron.config.cli import parse_config
    from megatron.data.batch import Batch
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine
    from megatron.trainer.universal import block_of

    mbs, T, V = 2, 16, 128
    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", str(T), "--micro-batch-size", str(mbs),
                        "--global-batch-size", str(2 * mbs), "--train-iters", "4",
                        "--deepspeed_config", ds_config, "--hidden-dropout", "0",
                        "--attention-dropout", "0", "--mock-data"] + (["--bf16"] if bf16 else []))
    cfg = cfg.replace(model={"vocab_size": V})
    layout = initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    engine = DeepSpeedTrainEngine(GPTModel(cfg.model), cfg, layout, 2 * mbs)
    torch.manual_seed(0)
    ref = GPTModel(cfg.model)
    batches = []
    for seed in (1, 2):
        tokens = torch.randint(0, V, (mbs, T), generator=torch.Generator().manual_seed(seed))
        batches.append(Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T),
                             torch.arange(T).expand(mbs, T)))
    micro = batches if world_size == 1 else [batches[rank]]
    result = engine.train_step(micro, 2 * mbs, layer_grad_norms=True)
    for b in batches:  # the reference: plain torch on the whole global batch
        (ref.loss(ref(b.tokens, position_ids=b.position_ids), b.labels, b.loss_mask) / 2).backward()
    sq = {}
    for name, p in ref.named_parameters():
        sq[block_of(name)] = sq.get(block_of(name), 0.0) + p.grad.pow(2).sum().item()
    return result.layer_grad_norms, {k: v ** 0.5 for k, v in sq.items()}, result.grad_norm


@pytest.mark.parametrize("world_size, ds_config, bf16, rel", [
    (1, "ds_configs/zero1.json", False, 1e-5),
    (2, "ds_configs/zero1.json", False, 1e-5),
    (2, "ds_configs/zero0_bf16.json", True, 3e-2),  # DeepSpeed's BF16_Optimizer
    (1, "ds_configs/zero1_bf16.json", True, 3e-2),  # ours (--bf16-optimizer auto at DP 1)
])
def test_per_layer_grad_norms_equal_plain_torch(world_size, ds_config, bf16, rel):
    ours, ref, total = run_on_ranks(_layer_grad_norms, world_size, (ds_config, bf16), 300)[0]
    assert list(ours) == ["embedding", "layers.0", "layers.1", "head"]
    for block, norm in ref.items():
        assert ours[block] == pytest.approx(norm, rel=rel), block
    # the blocks make up DeepSpeed's own global (pre-clipping) gradient norm
    assert sum(v * v for v in ours.values()) ** 0.5 == pytest.approx(total, rel=rel)


def _skip_if(rank, world_size, zero_stage):
    import torch

    from megatron.data.batch import Batch

    mbs, T, V = 2, 8, 128
    engine, model = _tiny_engine(world_size, zero_stage)
    tokens = torch.randint(0, V, (2, mbs, T), generator=torch.Generator().manual_seed(rank))
    micro = [Batch(t, torch.roll(t, -1, 1), torch.ones(mbs, T), torch.arange(T).expand(mbs, T))
             for t in tokens]
    seen = []
    engine.train_step(micro, 2 * mbs * world_size, skip_if=lambda loss: seen.append(loss))
    before = [p.detach().clone() for p in model.parameters()]
    dropped = engine.train_step(micro, 2 * mbs * world_size,
                                skip_if=lambda loss: seen.append(loss) or True)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = engine.train_step(micro, 2 * mbs * world_size)
    moved = not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return seen, dropped.loss, dropped.skipped, unchanged, after.skipped, moved


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_skip_if_drops_the_update_on_every_rank(zero_stage):
    """--loss-spike-action skip's engine half: skip_if sees the global batch's mean loss (the
    loss the step reports) and True drops the update on every rank; training goes on."""
    for seen, loss, skipped, unchanged, next_skipped, moved in run_on_ranks(
            _skip_if, 2, args=(zero_stage,), timeout=300):
        assert seen[1] == pytest.approx(loss, rel=1e-6)
        assert skipped and unchanged and not next_skipped and moved


def _device_syncs_in_steps(rank, world_size, extra):
    import torch
    from deepspeed.accelerator import get_accelerator

    from megatron.data.batch import Batch

    mbs, T, V = 2, 8, 128
    engine, _ = _tiny_engine(world_size, 1, extra)
    syncs = []
    accelerator = get_accelerator()
    real = accelerator.synchronize
    accelerator.synchronize = lambda *a, **k: (syncs.append(1), real(*a, **k))[1]
    tokens = torch.randint(0, V, (mbs, T), generator=torch.Generator().manual_seed(0))
    batch = Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T), torch.arange(T)
                  .expand(mbs, T))
    for _ in range(4):  # DeepSpeed's throughput timer starts syncing at its step 2
        engine.train_step([batch, batch], 2 * mbs * world_size)
    return len(syncs)


@pytest.mark.parametrize("extra", [("--bf16",), ("--bf16", "--bf16-optimizer", "deepspeed")])
def test_training_steps_do_not_synchronize_the_device(extra):
    """The host must be free to queue the next step while the device runs this one (a
    synchronize per forward and per step left an H100 idle while the next batch was read)."""
    assert run_on_ranks(_device_syncs_in_steps, 1, args=(extra,), timeout=300) == [0]


def _reduction_overlaps(rank, world_size):
    import torch

    from megatron.data.batch import Batch
    from megatron.trainer import grad_reducer
    grad_reducer.BUCKET_NUMEL = 3000  # several buckets for this tiny model
    engine, model = _tiny_engine(world_size, 0, ("--bf16", "--bf16-optimizer", "local",
                                                 "--num-layers", "2"))
    reducer = engine.optimizer.reducer
    mbs, T, V = 2, 8, 128
    tokens = torch.randint(0, V, (2, mbs, T), generator=torch.Generator().manual_seed(rank))
    micro = [Batch(t, torch.roll(t, -1, 1), torch.ones(mbs, T), torch.arange(T).expand(mbs, T))
             for t in tokens]
    out = []
    for accum in (2, 1, 2):
        engine.set_global_batch_size(accum * mbs * world_size)
        engine.train_step(micro[:accum], accum * mbs * world_size)
        out.append((reducer.overlapped, reducer.waited, len(reducer.buckets)))
    return out


def test_local_optimizer_reduces_every_bucket_during_the_last_backward():
    """--bf16-optimizer local at DP 2 through the engine: the buckets follow the model's order,
    so each is all-reduced during the step's last backward (parameter-group order would put
    every layer's biases in the first bucket, which waits for the end of the backward)."""
    for per_step in run_on_ranks(_reduction_overlaps, 2, timeout=300):
        for overlapped, waited, buckets in per_step:
            assert buckets > 2 and overlapped == buckets and waited == 0
