"""On a GPU (skipped without one): starting a training step through the DeepSpeed engine
makes no host sync, with and without gradient accumulation, so that the loop can queue the next
step while the device runs this one. torch's sync debug mode raises on .item(), blocking
copies and synchronize calls (it is a prototype: it sees those, not every possible sync).
DeepSpeed's own bf16 optimizer (--bf16-optimizer deepspeed) is not tested: it reads the gradient
norm's finiteness on the host in its step."""
import pytest
import torch

from distributed import run_on_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _start_steps_in_error_mode(rank, world_size, micro_batches, extra):
    from megatron.config.cli import parse_config
    from megatron.data.batch import Batch
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.build_engine import build_engine

    mbs, T, V = 2, 64, 128
    gbs = mbs * micro_batches
    cfg = parse_config(["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                        "--seq-length", str(T), "--micro-batch-size", str(mbs),
                        "--global-batch-size", str(gbs), "--train-iters", "9", "--bf16",
                        "--lr", "1e-3", "--mock-data", *extra])
    cfg = cfg.replace(model={"vocab_size": V})
    layout = initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    engine = build_engine(cfg, layout, gbs)
    tokens = torch.randint(0, V, (mbs, T), generator=torch.Generator().manual_seed(0))
    batch = Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T), torch.arange(T)
                  .expand(mbs, T))
    losses = [engine.train_step([batch] * micro_batches, gbs).loss for _ in range(2)]
    pending = None
    for _ in range(3):
        torch.cuda.set_sync_debug_mode("error")
        try:
            started = engine.start_step([batch] * micro_batches, gbs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if pending is not None:
            losses.append(pending.result().loss)
        pending = started
    losses.append(pending.result().loss)
    return losses


@pytest.mark.parametrize("micro_batches, extra", [
    (1, ()),  # our optimizer's one-pass kernel
    (2, ())])  # gradient accumulation: fp32 main_grad and torch's fused AdamW
def test_starting_a_step_makes_no_host_sync(micro_batches, extra):
    [losses] = run_on_ranks(_start_steps_in_error_mode, 1, args=(micro_batches, extra),
                            timeout=300)
    assert len(losses) == 5 and losses[-1] < losses[0]  # it trained


def test_a_step_finishes_when_the_device_does_not_when_the_host_looks():
    """PendingStep.finished_at comes from a CUDA event read against DeviceClock's anchor, so
    the loop's step times (the log's step ms and tokens/s) do not depend on when the host reads
    a step's results: in overlapped steps the host reads each step up to a step late."""
    import time

    from megatron.trainer.engine import PendingStep, StepResult
    from megatron.trainer.host_copy import DeviceClock, to_host

    clock = DeviceClock()
    clock.mark()  # the anchor
    x = torch.ones((), device="cuda")
    torch.cuda._sleep(100_000_000)  # keeps the device busy for tens of ms
    staged = to_host({"x": x * 2})
    end = clock.mark()
    step = PendingStep(lambda: StepResult(loss=staged()["x"], grad_norm=None, lr=0.0,
                                          skipped=False), device_time=end.time)
    torch.cuda.synchronize()
    device_done = time.perf_counter()
    time.sleep(0.3)  # the host looks late
    assert step.result().loss == 2.0
    assert step.observed_at - device_done >= 0.3
    assert abs(step.finished_at - device_done) < 0.005, (step.finished_at, device_done)
