"""GPT datasets through megatron/data/gpt_datasets.py on small hand-written indexed files:
blend proportions, split boundaries, the index cache being reused, the same global batches for
DP 1 and DP 2 through the real dataset and loader, truncated/mismatched files refused with the
file named, and prefix-LM batches from make_batch."""
import os
import shutil
from collections import Counter

import pytest
import torch

from distributed import run_on_ranks
from indexed_data import (SaveSpy, build, cache_files, data_config, init_gloo, rows,
                          write_indexed)
from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config
from megatron.data.batch import make_batch, sample_seed
from megatron.data.gpt_datasets import (IndexedDatasetError, build_gpt_datasets,
                                        check_indexed_dataset, make_loader)
from megatron.data.prefix_lm import prefix_lengths


def _two_sources(tmp_path):
    """Dataset a: tokens 1..99, dataset b: tokens 200..299 (tell a sample's source apart)."""
    g = torch.Generator().manual_seed(0)
    a = [torch.randint(1, 100, (int(n),), generator=g).tolist()
         for n in torch.randint(5, 40, (200,), generator=g)]
    b = [torch.randint(200, 300, (int(n),), generator=g).tolist()
         for n in torch.randint(5, 40, (200,), generator=g)]
    return write_indexed(tmp_path / "a", a), write_indexed(tmp_path / "b", b)


# ---- blends ----------------------------------------------------------------------------------

def _blend_sources(rank, world, a, b, cache):
    init_gloo(rank, world)
    train, _, _ = build(data_config("0.7", a, "0.3", b, cache=cache), 16, (2000, 0, 0))
    sources = Counter()
    first = []
    for i in range(2000):
        t = train[i]["tokens"]
        src = "a" if t.max() < 150 else "b"
        assert (t.max() < 150) == (t.min() < 150)  # a sample never mixes datasets
        sources[src] += 1
        if i < 200:
            first.append(src)
    return sources, Counter(first)


def test_blend_draws_in_proportion_to_weights(tmp_path):
    a, b = _two_sources(tmp_path)
    (sources, first), = run_on_ranks(_blend_sources, 1, (a, b, str(tmp_path / "cache")), 120)
    assert sum(sources.values()) == 2000
    assert abs(sources["a"] / 2000 - 0.7) < 0.03
    assert abs(first["a"] / 200 - 0.7) < 0.05  # also early in the run, not only on average


# ---- split boundaries ------------------------------------------------------------------------

def _split_tokens(rank, world, prefix, cache):
    init_gloo(rank, world)
    train, valid, test = build(data_config(prefix, split="90,10,0", cache=cache), 8,
                               (200, 20, 0))
    tokens = lambda ds: {int(x) for i in range(len(ds)) for x in ds[i]["tokens"]}
    return tokens(train), tokens(valid), test is None


def test_split_puts_disjoint_document_ranges_in_train_and_valid(tmp_path):
    # document i holds only the token i + 1, so a token names its document
    prefix = write_indexed(tmp_path / "docs", [[i + 1] * 5 for i in range(100)])
    (train, valid, no_test), = run_on_ranks(_split_tokens, 1, (prefix, str(tmp_path / "c")), 120)
    assert train and valid and no_test
    assert train <= set(range(1, 91)) and valid <= set(range(91, 101))
    assert len(train) > 80  # the train split really uses its documents
    assert train.isdisjoint(valid)


# ---- index cache -----------------------------------------------------------------------------

def _build_with_spy(rank, world, prefix, cache):
    init_gloo(rank, world)
    with SaveSpy() as spy:
        train, valid, _ = build(data_config(prefix, split="80,20,0", cache=cache), 16,
                                (300, 30, 0))
    return spy.calls, rows(train, range(0, 300, 7)), rows(valid, range(30))


def test_index_cache_written_once_and_reused(tmp_path):
    a, _ = _two_sources(tmp_path)
    cache = tmp_path / "index_cache"
    (saves, train, valid), = run_on_ranks(_build_with_spy, 1, (a, str(cache)), 120)
    first = cache_files(cache)
    assert saves > 0 and any(f.endswith(".npy") for f in first)
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx", "b.bin", "b.idx", "index_cache"]
    (saves2, train2, valid2), = run_on_ranks(_build_with_spy, 1, (a, str(cache)), 120)
    assert saves2 == 0  # loaded, not rebuilt
    assert cache_files(cache) == first  # same files, none rewritten
    assert (train2, valid2) == (train, valid)


# ---- the same global batches for DP 1 and DP 2 (real dataset and loader) ----------------------

def _steps(dataset, gbs, mbs, dp, consumed=0, n_steps=6):
    """Per step, the sorted token rows all DP ranks read (as pretrain_gpt.py's loaders do)."""
    iters = [iter(make_loader(dataset, consumed, mbs, r, dp)) for r in range(dp)]
    accum = gbs // (mbs * dp)
    steps = []
    for _ in range(n_steps):
        step = []
        for it in iters:
            for _ in range(accum):
                step += [tuple(t.tolist()) for t in next(it)["tokens"]]
        steps.append(sorted(step))
    return steps


def _layouts(rank, world, a, b, cache):
    init_gloo(rank, world)
    train, _, _ = build(data_config("0.6", a, "0.4", b, cache=cache), 16, (200, 0, 0))
    ref = _steps(train, gbs=8, mbs=8, dp=1)
    other = {(mbs, dp): _steps(train, gbs=8, mbs=mbs, dp=dp) for mbs, dp in
             [(2, 1), (4, 2), (2, 2), (1, 2)]}
    resumed = _steps(train, gbs=8, mbs=2, dp=2, consumed=16, n_steps=4)
    return ref, other, resumed


def test_same_global_batches_for_dp1_and_dp2_through_the_loader(tmp_path):
    a, b = _two_sources(tmp_path)
    (ref, other, resumed), = run_on_ranks(_layouts, 1, (a, b, str(tmp_path / "c")), 120)
    assert all(len(s) == 8 for s in ref) and ref[0] != ref[1]
    for layout, steps in other.items():
        assert steps == ref, layout
    assert resumed == ref[2:]


def _masks_by_read_order(rank, world, cache):
    """Loss masks of sample j read first, and read after a sample with pad labels."""
    init_gloo(rank, world)
    from megatron.config.schema import DataConfig
    from megatron.data.gpt_datasets import SplitSizes
    from megatron.data.tokenizers import ByteLevelTokenizer
    tok = ByteLevelTokenizer()  # pad 257 is an ordinary id in megatron-core's mock tokens
    cfg = DataConfig(mock_data=True, split="100,0,0", data_cache_path=cache)

    def fresh():
        return build_gpt_datasets(cfg, tok, 32, 1234, SplitSizes(64, 0, 0))[0]
    probe = fresh()
    padded = [i for i in range(64) if (probe[i]["loss_mask"] == 0).any()]
    clean = [i for i in range(64) if (probe[i]["loss_mask"] == 1).all()]
    first, j = padded[0], clean[0]
    after = fresh()
    after[first]
    padded = fresh()[first]
    return [t.tolist() for t in (fresh()[j]["loss_mask"], after[j]["loss_mask"],
                                 padded["loss_mask"], padded["labels"])]


def test_loss_mask_does_not_depend_on_which_sample_was_read_first(tmp_path):
    """megatron-core caches the first sample's mask with its pads zeroed (a resumed run reads
    a different first sample): our datasets recompute each sample's own mask."""
    (alone, after_padded, padded, labels), = run_on_ranks(
        _masks_by_read_order, 1, (str(tmp_path / "c"),), 120)
    assert alone == [1.0] * 32 and after_padded == alone
    # megatron-core masks pad labels and then writes them as id 0
    assert min(padded) == 0 and all(label == 0 for m, label in zip(padded, labels) if m == 0)


# ---- truncated or mismatched files -----------------------------------------------------------

def _copy(src, dst, bin_from=None, idx_from=None):
    shutil.copy((bin_from or src) + ".bin", dst + ".bin")
    shutil.copy((idx_from or src) + ".idx", dst + ".idx")
    return dst


def test_truncated_or_mismatched_files_are_named(tmp_path):
    a, b = _two_sources(tmp_path)
    check_indexed_dataset(a)
    truncated = _copy(a, str(tmp_path / "trunc"))
    with open(truncated + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(truncated + ".bin") - 2)  # one token short
    swapped = _copy(a, str(tmp_path / "swapped"), idx_from=b)
    short_idx = _copy(a, str(tmp_path / "short_idx"))
    with open(short_idx + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(short_idx + ".idx") - 8)
    for prefix in (truncated, swapped, short_idx):
        with pytest.raises(IndexedDatasetError) as e:
            check_indexed_dataset(prefix)
        assert prefix + (".idx" if prefix == short_idx else ".bin") in str(e.value)
        # on load (before megatron-core reads any token) ...
        with pytest.raises(IndexedDatasetError, match=os.path.basename(prefix)):
            build_gpt_datasets(data_config(prefix), None, 8, 0, None)
        # ... and at start-up, as a flag error
        with pytest.raises(ConfigError, match=f"--data-path {prefix}:"):
            validate_config(parse_config(["--train-iters", "1", "--data-path", prefix,
                                          "--tokenizer-type", "NullTokenizer",
                                          "--vocab-size", "1000"]), 1)


# ---- prefix-LM batches -----------------------------------------------------------------------

def _sample(tokens, loss_mask=None):
    tokens = torch.tensor(tokens)
    return {"tokens": tokens, "labels": torch.roll(tokens, -1, 1),
            "loss_mask": torch.ones(tokens.shape) if loss_mask is None else
            torch.tensor(loss_mask, dtype=torch.float),
            "position_ids": torch.arange(tokens.shape[1]).expand_as(tokens)}


def test_prefix_lm_batch_hand_made_example():
    eod = 9
    sample = _sample([[5, 6, 7, 9, 1, 2, 3, 4], [1, 1, 2, 2, 3, 3, 4, 4]],
                     loss_mask=[[1, 1, 1, 0, 1, 1, 1, 1], [1] * 8])  # e.g. --eod-mask-loss
    plain = make_batch(sample, eod, False)
    assert plain.prefix_lengths is None and torch.equal(plain.loss_mask, sample["loss_mask"])

    b = make_batch(sample, eod, True, prefix_lm=True, loss_on_targets_only=True, seed=7)
    # the split of each sample comes from its own tokens and the seed
    want = [int(prefix_lengths(1, 8, sample_seed(sample["tokens"][i], sample["labels"][i], 7)))
            for i in range(2)]
    assert b.prefix_lengths.tolist() == want and all(1 <= p <= 7 for p in want)
    for i, p in enumerate(want):
        # label t is token t + 1: position p - 1 predicts the first target
        targets = [0.0] * (p - 1) + [1.0] * (8 - p + 1)
        assert b.loss_mask[i].tolist() == [t * m for t, m in
                                           zip(targets, sample["loss_mask"][i].tolist())]
    assert b.document_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]

    no_loss_split = make_batch(sample, eod, False, prefix_lm=True, seed=7)
    assert torch.equal(no_loss_split.prefix_lengths, b.prefix_lengths)
    assert torch.equal(no_loss_split.loss_mask, sample["loss_mask"])

    # the same sample gets the same split alone, in another order, on another micro-batch
    alone = make_batch(_sample([[1, 1, 2, 2, 3, 3, 4, 4]]), eod, False, prefix_lm=True,
                       loss_on_targets_only=True, seed=7)
    assert alone.prefix_lengths.tolist() == [want[1]]
    assert torch.equal(alone.loss_mask[0], b.loss_mask[1])

    with pytest.raises(ValueError, match="prefix_lm"):
        make_batch(sample, eod, False, loss_on_targets_only=True)


def test_prefix_lm_splits_vary_with_sample_and_seed():
    g = torch.Generator().manual_seed(1)
    sample = _sample(torch.randint(0, 50, (64, 16), generator=g).tolist())
    a = make_batch(sample, 99, False, prefix_lm=True, seed=1).prefix_lengths
    assert len(set(a.tolist())) > 8 and a.min() >= 1 and a.max() <= 15
    assert not torch.equal(a, make_batch(sample, 99, False, prefix_lm=True, seed=2).prefix_lengths)
    assert torch.equal(a, make_batch(sample, 99, False, prefix_lm=True, seed=1).prefix_lengths)
