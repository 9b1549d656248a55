"""StopRequest (megatron/trainer/signals.py): a signal on one rank stops every rank at the same
step. Above one rank the ranks agree one call late (the all-reduce is read when the next call
starts another, so the host never waits for the device there); on one rank at once."""
from distributed import run_on_ranks


def _calls(rank, world_size, signalled_rank):
    import os
    import signal

    import torch
    import torch.distributed as dist

    from megatron.trainer.signals import StopRequest

    dist.init_process_group("gloo")
    stop = StopRequest()
    try:
        if rank == signalled_rank:
            os.kill(os.getpid(), signal.SIGUSR1)
        seen = [stop.requested(torch.device("cpu")) for _ in range(3)]
    finally:
        stop.restore()
    return seen, stop.reason


def test_signal_on_one_rank_stops_all_ranks_one_call_later():
    results = run_on_ranks(_calls, 2, args=(1,), timeout=120)
    assert [seen for seen, _ in results] == [[False, True, True]] * 2
    assert [reason for _, reason in results] == ["SIGUSR1 (received by another rank)", "SIGUSR1"]


def test_no_signal_never_stops():
    assert run_on_ranks(_calls, 2, args=(None,), timeout=120) == [([False] * 3, None)] * 2


def test_one_rank_stops_at_once():
    assert run_on_ranks(_calls, 1, args=(0,), timeout=120) == [([True] * 3, "SIGUSR1")]
