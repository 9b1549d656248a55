"""BigScience's --{train,valid,test}-weighted-split-paths[-path]: parsing the groups and their
file, the start-up errors, and datasets that draw each source in its weight from its document
range only."""
from collections import Counter

import pytest

from distributed import run_on_ranks
from indexed_data import VOCAB, init_gloo, write_indexed
from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config
from megatron.data.weighted_splits import (Group, Part, WeightedSplitError, groups_for,
                                           parse_group, read_groups_file)


def test_group_syntax_and_bigscience_file(tmp_path):
    g = parse_group("train: 0.7 0:0.95 data/en_text_document, 0.3 0:0.950 data/fr", "--x")
    assert g == Group("train", (Part(0.7, 0.0, 0.95, "data/en_text_document"),
                                Part(0.3, 0.0, 0.95, "data/fr")))
    # what BigScience's load_ratios_meg_ds_format.py writes (one group), and several groups
    f = tmp_path / "valid-splits.txt"
    f.write_text('"valid: 1.5 0.950:1.0 data/en, 2 0.950:1.0 data/fr"\n')
    assert read_groups_file(str(f), "--v") == ["valid: 1.5 0.950:1.0 data/en, 2 0.950:1.0 "
                                                "data/fr"]
    f.write_text('"valid-en: 1 0.95:1 data/en" "valid-fr: 1 0.95:1 data/fr"\n')
    cfg = parse_config(["--valid-weighted-split-paths-path", str(f)])
    assert [g.name for g in groups_for(cfg.data, "valid")] == ["valid-en", "valid-fr"]
    cfg = parse_config(["--valid-weighted-split-paths", "a: 1 0:1 x", "b: 2 0:0.5 y"])
    assert [g.parts[0].prefix for g in groups_for(cfg.data, "valid")] == ["x", "y"]


@pytest.mark.parametrize("text, message", [
    ("no colon here", "is not 'NAME: WEIGHT START:END PREFIX"),
    ("g: 0.5 0:1", "'0.5 0:1' in group 'g' is not 'WEIGHT START:END PREFIX'"),
    ("g: x 0:1 p", "must be numbers"),
    ("g: 1 0.9:0.5 p", "0 <= START < END <= 1"),
    ("g: 0 0:1 p", "WEIGHT > 0"),
])
def test_malformed_groups_are_named(text, message):
    with pytest.raises(WeightedSplitError, match=message):
        parse_group(text, "--train-weighted-split-paths")


def test_start_up_errors_name_the_flag_and_file(tmp_path):
    prefix = write_indexed(tmp_path / "a", [[1, 2, 3]] * 10)

    def check(*flags):
        with pytest.raises(ConfigError) as e:
            validate_config(parse_config(["--train-iters", "1", "--tokenizer-type",
                                          "NullTokenizer", "--vocab-size", "10", *flags]), 1)
        return str(e.value)
    assert "use one" in check("--data-path", prefix, "--train-weighted-split-paths",
                              f"t: 1 0:1 {prefix}")
    missing = tmp_path / "nope.txt"
    assert f"--train-weighted-split-paths-path {missing}: no such file" in check(
        "--train-weighted-split-paths-path", str(missing))
    two_lines = tmp_path / "two.txt"
    two_lines.write_text(f'"t: 1 0:1 {prefix}"\n"u: 1 0:1 {prefix}"\n')
    assert "expected one line" in check("--train-weighted-split-paths-path", str(two_lines))
    unterminated = tmp_path / "quote.txt"
    unterminated.write_text(f'"t: 1 0:1 {prefix}\n')
    assert "double quotes" in check("--train-weighted-split-paths-path", str(unterminated))
    assert "training takes one group" in check("--train-weighted-split-paths",
                                               f"t: 1 0:1 {prefix}", f"u: 1 0:1 {prefix}")
    assert "need --train-weighted-split-paths" in check("--valid-weighted-split-paths",
                                                        f"v: 1 0:1 {prefix}")
    gone = str(tmp_path / "gone_text_document")
    assert f"--valid-weighted-split-paths group 'v' {gone}: missing" in check(
        "--train-weighted-split-paths", f"t: 1 0:1 {prefix}",
        "--valid-weighted-split-paths", f"v: 1 0:1 {gone}")


def _draws(rank, world, a, b, cache):
    """Per source: how many of 1000 train samples, and which documents they read."""
    init_gloo(rank, world)
    from megatron.data.gpt_datasets import SplitSizes, build_datasets
    from megatron.data.tokenizers import build_tokenizer
    cfg = parse_config(["--data-cache-path", cache,
                        "--train-weighted-split-paths", f"train: 0.7 0:0.5 {a}, 0.3 0.5:1 {b}",
                        "--valid-weighted-split-paths", f"va: 1 0.5:1 {a}", f"vb: 1 0:0.5 {b}"])
    tok = build_tokenizer("NullTokenizer", vocab_size=VOCAB)
    train, valid, test = build_datasets(cfg.data, tok, 8, 1234, SplitSizes(1000, 50, 0))
    counts, docs = Counter(), {"a": set(), "b": set()}
    for i in range(1000):
        t = set(train[i]["tokens"].tolist())
        src = "a" if max(t) < 500 else "b"
        counts[src] += 1
        docs[src] |= t
    valid_docs = {name: {x for i in range(len(ds)) for x in ds[i]["tokens"].tolist()}
                  for name, ds in valid}
    return counts, {k: sorted(v) for k, v in docs.items()}, valid_docs, test


def test_group_draws_by_weight_from_each_document_range(tmp_path):
    # document i of a holds only token i + 1, of b only 501 + i: a token names its document
    a = write_indexed(tmp_path / "a", [[i + 1] * 6 for i in range(100)])
    b = write_indexed(tmp_path / "b", [[501 + i] * 6 for i in range(100)])
    (counts, docs, valid, test), = run_on_ranks(_draws, 1, (a, b, str(tmp_path / "c")), 120)
    assert abs(counts["a"] / 1000 - 0.7) < 0.03 and counts["a"] + counts["b"] == 1000
    assert docs["a"] == list(range(1, 51))      # a's documents 0..49, every one of them
    assert docs["b"] == list(range(551, 601))   # b's documents 50..99
    assert list(valid) == ["va", "vb"] and test == []
    assert valid["va"] <= set(range(51, 101)) and valid["vb"] <= set(range(501, 551))
