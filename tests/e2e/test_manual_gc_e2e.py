"""--manual-gc through pretrain_gpt.py: the collector is off for the whole run, and collections
happen where the flags put them (start, every --manual-gc-interval steps, around each
evaluation), then the collector is back on."""
import pytest

from cli_runner import pretrain_cmd
from distributed import run_on_ranks

pytestmark = pytest.mark.slow


def _run(rank, world_size, argv):
    import gc

    import pretrain_gpt
    from megatron.trainer import manual_gc

    calls = []
    real = gc.collect
    gc.collect = lambda *a: calls.append(gc.isenabled()) or real()
    try:
        history = pretrain_gpt.main(argv).history
    finally:
        gc.collect = real
    assert manual_gc.gc is gc
    return calls, gc.isenabled(), history


def test_manual_gc_collects_where_the_flags_say(tiny_data):
    cmd = pretrain_cmd(tiny_data, 1, "--micro-batch-size", "2", "--train-iters", "6",
                       "--eval-interval", "3", "--eval-iters", "1", "--manual-gc",
                       "--manual-gc-interval", "2")
    argv = cmd[cmd.index("pretrain_gpt.py") + 1:]
    [(calls, enabled_after, history)] = run_on_ranks(_run, 1, args=(argv,), timeout=300)
    evaluations = [e for e in history if "validation loss" in e or "test loss" in e]
    assert len(evaluations) == 3  # validation at 3 and 6, test at the end
    ours = [c for c in calls if c is False]  # collections while the collector was off
    assert len(ours) == 1 + 3 + 2 * 3, calls  # start, steps 2/4/6, before+after each evaluation
    assert enabled_after
