import pytest

from megatron.data.blend import megatron_blend, parse_data_path
from megatron.data.sampler import PretrainingSampler


def _global_order(total, gbs, mbs, dp, start=0):
    """Samples each step reads, gathered over DP ranks and micro-steps, as sorted lists."""
    per_rank = [list(PretrainingSampler(total, start, mbs, r, dp)) for r in range(dp)]
    accum = gbs // (mbs * dp)
    steps = []
    for s in range(len(per_rank[0]) // accum):
        step = []
        for r in range(dp):
            for mb in per_rank[r][s * accum:(s + 1) * accum]:
                step += mb
        steps.append(sorted(step))
    return steps


def test_same_global_batches_for_any_layout():
    ref = _global_order(96, gbs=8, mbs=8, dp=1)
    for mbs, dp in [(1, 1), (2, 2), (1, 4), (4, 2), (1, 8)]:
        assert _global_order(96, gbs=8, mbs=mbs, dp=dp) == ref
    assert ref[0] == list(range(8)) and ref[1] == list(range(8, 16))


def test_resume_from_consumed_samples_gives_the_next_batch():
    full = _global_order(64, gbs=8, mbs=2, dp=2)
    resumed = _global_order(64, gbs=8, mbs=2, dp=2, start=24)
    assert resumed == full[3:]


def test_ranks_read_disjoint_samples():
    seen = [i for r in range(4) for mb in PretrainingSampler(40, 0, 2, r, 4) for i in mb]
    assert sorted(seen) == list(range(40))


def test_nothing_left_is_an_error():
    with pytest.raises(ValueError, match="no samples left"):
        PretrainingSampler(10, 10, 1, 0, 1)


def test_data_path_blends():
    assert parse_data_path(["a"]) == [(1.0, "a")]
    assert parse_data_path(["0.7", "a", "0.3", "b"]) == [(0.7, "a"), (0.3, "b")]
    assert megatron_blend(["0.7", "a", "0.3", "b"]) == (["a", "b"], [0.7, 0.3])
    assert megatron_blend(["a", "b"]) == (["a", "b"], None)
    assert megatron_blend(["a"]) == (["a"], None)
    with pytest.raises(ValueError, match="odd number"):
        parse_data_path(["0.7", "a", "0.3"])
