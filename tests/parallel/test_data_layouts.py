"""Datasets on 4 gloo ranks through megatron/data/gpt_datasets.py: the index cache is built
once (rank 0 writes, the others load), every rank sees the same samples, and the loaders of a
TP 2 x DP 2 layout read, step by step, the same global batches (and prefix-LM splits) as one
rank with DP 1."""
import pytest
import torch

from distributed import run_on_ranks
from indexed_data import SaveSpy, build, cache_files, data_config, init_gloo, rows, write_indexed
from megatron.data.batch import make_batch
from megatron.data.gpt_datasets import make_loader

pytestmark = pytest.mark.slow  # 4 spawned ranks: ~15-30 s on 2 cores

GBS, STEPS = 8, 5


def _step_rows(loader, mbs, dp):
    """Per step: this rank's (tokens row, prefix length) pairs."""
    it, accum = iter(loader), GBS // (mbs * dp)
    out = []
    for _ in range(STEPS):
        step = []
        for _ in range(accum):
            b = make_batch(next(it), eod=1000, reset_attention_mask=False, prefix_lm=True,
                           loss_on_targets_only=True, seed=5)
            step += [(tuple(t.tolist()), int(p)) for t, p in zip(b.tokens, b.prefix_lengths)]
        out.append(step)
    return out


def _ranks(rank, world, a, b, cache):
    init_gloo(rank, world)
    with SaveSpy() as spy:
        train, valid, _ = build(data_config("0.6", a, "0.4", b, split="90,10,0", cache=cache),
                                16, (200, 20, 0))
    import torch.distributed as dist
    dist.barrier()
    tp, dp = 2, world // 2
    dp_rank = rank // tp  # TP innermost, as the layout orders ranks
    mine = _step_rows(make_loader(train, 0, 2, dp_rank, dp), 2, dp)
    ref = _step_rows(make_loader(train, 0, GBS, 0, 1), GBS, 1) if rank == 0 else None
    return dict(saves=spy.calls, files=cache_files(cache), dp_rank=dp_rank, mine=mine, ref=ref,
                samples=rows(train, range(0, 200, 3)) + rows(valid, range(20)))


def _docs(lo, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(lo, lo + 100, (int(n),), generator=g).tolist()
            for n in torch.randint(5, 40, (150,), generator=g)]


def test_cache_built_once_same_samples_and_same_global_batches_on_4_ranks(tmp_path):
    a = write_indexed(tmp_path / "a", _docs(1, 0))
    b = write_indexed(tmp_path / "b", _docs(200, 1))
    out = run_on_ranks(_ranks, 4, (a, b, str(tmp_path / "cache")), timeout=180)
    assert out[0]["saves"] > 0 and all(o["saves"] == 0 for o in out[1:])  # built once
    assert all(o["files"] == out[0]["files"] for o in out)  # nobody rewrote a file
    assert all(o["samples"] == out[0]["samples"] for o in out)
    ref = out[0]["ref"]
    for step in range(STEPS):
        # TP ranks of one DP rank read the same micro-batches ...
        for o in out:
            assert o["mine"][step] == out[2 * o["dp_rank"]]["mine"][step]
        # ... and the DP ranks together read DP 1's global batch, with the same prefix splits
        together = out[0]["mine"][step] + out[2]["mine"][step]
        assert sorted(together) == sorted(ref[step])
    assert len({p for step in ref for _, p in step}) > 3  # the splits do vary
