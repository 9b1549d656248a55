"""--manual-gc (megatron/trainer/manual_gc.py): the flags reach the config, and ManualGC turns
Python's collector off, collects on its schedule and restores it."""
import gc

from megatron.config.cli import parse_config
from megatron.trainer import manual_gc
from megatron.trainer.manual_gc import ManualGC

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "2", "--train-iters", "3", "--mock-data"]


def test_flags_reach_the_config():
    t = parse_config(BASE).training
    assert (t.manual_gc, t.manual_gc_interval, t.manual_gc_eval) == (False, 0, True)
    t = parse_config(BASE + ["--manual-gc", "--manual-gc-interval", "5",
                             "--no-manual-gc-eval"]).training
    assert (t.manual_gc, t.manual_gc_interval, t.manual_gc_eval) == (True, 5, False)


def _counting(monkeypatch):
    calls = []
    real = gc.collect
    monkeypatch.setattr(manual_gc.gc, "collect", lambda *a: calls.append(gc.isenabled()) or real())
    return calls


def test_collects_on_its_schedule_with_the_collector_off(monkeypatch):
    calls = _counting(monkeypatch)
    assert gc.isenabled()
    m = ManualGC(True, interval=3)
    m.start()
    try:
        assert not gc.isenabled() and len(calls) == 1
        for iteration in range(1, 8):
            m.after_step(iteration)
        assert len(calls) == 3  # after steps 3 and 6
        m.around_evaluation()
        assert len(calls) == 4
        assert not any(calls)  # every collection ran with the automatic collector off
    finally:
        m.stop()
    assert gc.isenabled()


def test_without_the_flag_nothing_changes(monkeypatch):
    calls = _counting(monkeypatch)
    m = ManualGC(False, interval=1)
    m.start()
    m.after_step(1)
    m.around_evaluation()
    assert gc.isenabled() and calls == []
    m.stop()
    assert gc.isenabled()
    ManualGC(True, interval=0, around_eval=False).around_evaluation()
    assert calls == []
