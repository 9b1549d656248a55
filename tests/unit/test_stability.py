import math

from megatron.trainer.stability import SpikeDetector


def test_spike_detected_against_running_statistics():
    det = SpikeDetector(threshold=4.0, window=20, min_history=10)
    losses = [3.0 + 0.01 * ((i * 7) % 5) for i in range(30)]
    assert all(det.check(i, x) is None for i, x in enumerate(losses))
    spike = det.check(30, 3.5)
    assert spike is not None and spike.iteration == 30 and spike.loss == 3.5
    assert "loss spike at iteration 30" in spike.describe()
    assert det.check(31, 3.02) is None          # the spike did not enter the statistics
    assert det.check(32, 3.5) is not None


def test_no_verdict_before_enough_history_or_on_nan():
    det = SpikeDetector(threshold=3.0, min_history=5)
    assert [det.check(i, x) for i, x in enumerate([9.0, 1.0, 1.0, 1.0, 1.0])] == [None] * 5
    assert det.check(5, math.nan) is None


def test_slow_decrease_is_not_a_spike():
    det = SpikeDetector(threshold=3.0, window=50)
    assert all(det.check(i, 8.0 * 0.99 ** i) is None for i in range(300))
