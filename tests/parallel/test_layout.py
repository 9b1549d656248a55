import pytest

from distributed import RankFailed, run_on_ranks


def _coords(rank, world_size, tp, pp):
    from megatron.config.schema import ParallelConfig
    from megatron.parallel.layout import initialize_parallel
    layout = initialize_parallel(ParallelConfig(tensor_model_parallel_size=tp,
                                                pipeline_model_parallel_size=pp))
    return layout.rank, layout.pp_rank, layout.dp_rank, layout.tp_rank


def test_layout_coordinates_tp_innermost_then_dp_then_pp():
    coords = run_on_ranks(_coords, 8, args=(2, 2), timeout=180)
    # rank = pp * (tp*dp) + dp * tp + tp
    assert coords == [(r, r // 4, (r // 2) % 2, r % 2) for r in range(8)]


def _boom(rank, world_size):
    if rank == 1:
        raise ValueError("rank one exploded")
    import time
    time.sleep(60)


def test_failing_rank_fails_fast_with_its_error():
    import time
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="rank one exploded"):
        run_on_ranks(_boom, 2, timeout=50)
    assert time.monotonic() - t0 < 40
