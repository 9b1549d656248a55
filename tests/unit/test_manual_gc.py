"""--manual-gc (megatron/trainer/manual_gc.py): the flags reach the config, and ManualGC turns
Python's collector off, collects on its schedule and restores it."""
import gc

import pytest

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config
from megatron.trainer import manual_gc
from megatron.trainer.manual_gc import ManualGC

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "2", "--train-iters", "3", "--mock-data"]


def test_flags_reach_the_config():
    t = parse_config(BASE).training
    assert (t.manual_gc, t.manual_gc_interval, t.manual_gc_eval) == (False, 0, True)
    cfg = parse_config(BASE + ["--manual-gc", "--manual-gc-interval", "5", "--no-manual-gc-eval"])
    t = cfg.training
    assert (t.manual_gc, t.manual_gc_interval, t.manual_gc_eval) == (True, 5, False)
    validate_config(cfg, 1)


@pytest.mark.parametrize("extra, message", [
    (["--manual-gc", "--manual-gc-interval", "-1"], "--manual-gc-interval -1 must be 0"),
    (["--manual-gc-interval", "10"], "--manual-gc-interval 10 has no effect without --manual-gc"),
    (["--no-manual-gc-eval"], "--no-manual-gc-eval has no effect without --manual-gc"),
])
def test_bad_combinations_are_refused_by_name(extra, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(parse_config(BASE + extra), 1)


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
