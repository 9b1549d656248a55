"""Tokenizers (megatron/data/tokenizers.py) and tools/train_tokenizer.py."""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.data.tokenizers import build_tokenizer, padded_vocab_size

from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ["Hello, world!", "  two  spaces\tand a tab\nand a newline\n", "héllo wörld ✓ 日本語 🙂",
           " leading space", "literal <eod> and <pad> stay text", ""]


def docstring_corpus(path: Path) -> Path:
    """A small real text: docstrings of a few stdlib modules, one JSON document each."""
    import argparse, collections, json as json_mod, pathlib, textwrap  # noqa: E401

    with open(path, "w") as f:
        for module in (argparse, collections, json_mod, pathlib, textwrap):
            for name, obj in inspect.getmembers(module):
                doc = inspect.getdoc(obj)
                if doc and not name.startswith("_"):
                    f.write(json.dumps({"text": doc}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return docstring_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


def train(corpus, prefix, *extra):
    tool = load_tool("train_tokenizer")
    return tool.main(["--input", str(corpus), "--vocab-size", "500", "--output-prefix",
                      str(prefix), *extra])[0]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip_and_special_ids(corpus, tmp_path, model_type):
    model = train(corpus, tmp_path / "spm", "--model-type", model_type)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=model)
    assert (tok.vocab_size, tok.bos, tok.eod, tok.pad) == (500, 1, 2, 3)
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert tok.detokenize(ids) == text
        assert tok.eod not in ids and tok.pad not in ids  # special ids never come from text
    assert tok.detokenize(tok.tokenize("abc") + [tok.eod]) == "abc"
    gpt = build_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=model)
    assert (gpt.eod, gpt.pad, gpt.tokenize(SAMPLES[2])) == (tok.eod, tok.pad, tok.tokenize(SAMPLES[2]))
    assert gpt.unique_identifiers != tok.unique_identifiers
    json.dumps(tok.unique_identifiers)  # megatron-core hashes its JSON


def test_train_tokenizer_is_deterministic(corpus, tmp_path):
    a = Path(train(corpus, tmp_path / "spm", "--max-sentences", "300", "--seed", "7")).read_bytes()
    b = Path(train(corpus, tmp_path / "spm", "--max-sentences", "300", "--seed", "7")).read_bytes()
    assert a == b


def test_train_tokenizer_runs_as_script(corpus, tmp_path):
    out = subprocess.run([sys.executable, "tools/train_tokenizer.py", "--input", str(corpus),
                          "--vocab-size", "400", "--output-prefix", str(tmp_path / "t")],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert "t.model" in out.stdout and (tmp_path / "t.model").exists()
    assert "trainer_interface" not in out.stderr  # sentencepiece's log is quiet by default


def test_byte_level_round_trip():
    tok = build_tokenizer("ByteLevelTokenizer")
    assert (tok.vocab_size, tok.eod, tok.pad, tok.bos) == (258, 256, 257, None)
    for text in SAMPLES:
        ids = tok.tokenize(text)
        assert max(ids, default=0) < 256 and tok.detokenize(ids) == text
    assert tok.tokenize("é") == [0xC3, 0xA9]
    assert tok.detokenize([104, 105, 256, 257]) == "hi"


def _train_hf_bpe(corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [json.loads(line)["text"] for line in open(corpus)]
    tok.train_from_iterator(texts, trainer)
    return tok


def test_huggingface_tokenizer_json_and_directory(corpus, tmp_path):
    raw = _train_hf_bpe(corpus)
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer("HuggingFaceTokenizer",
                          tokenizer_name_or_path=str(tmp_path / "tokenizer.json"))
    assert (tok.vocab_size, tok.eod, tok.pad) == (raw.get_vocab_size(), 0, 1)
    for text in SAMPLES:
        assert tok.detokenize(tok.tokenize(text)) == text

    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "dir")
    dtok = build_tokenizer("HuggingFaceTokenizer", tokenizer_name_or_path=str(tmp_path / "dir"))
    assert (dtok.vocab_size, dtok.eod, dtok.pad) == (tok.vocab_size, 0, 1)
    assert dtok.tokenize(SAMPLES[2]) == tok.tokenize(SAMPLES[2])
    assert dtok.detokenize(dtok.tokenize(SAMPLES[1])) == SAMPLES[1]


def test_gpt2_bpe_from_vocab_and_merges(corpus, tmp_path):
    raw = _train_hf_bpe(corpus)
    raw.model.save(str(tmp_path))  # vocab.json + merges.txt, the GPT-2 file format
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "vocab.json"),
                          merge_file=str(tmp_path / "merges.txt"))
    assert (tok.eod, tok.pad, tok.vocab_size) == (0, -1, raw.get_vocab_size())
    for text in SAMPLES[:4]:
        ids = tok.tokenize(text)
        assert ids == raw.encode(text).ids and tok.detokenize(ids) == text
    assert tok.detokenize([tok.eod]) == "<|endoftext|>"


def test_bad_flags_are_named(tmp_path):
    with pytest.raises(ValueError, match="--tokenizer-type 'Bogus'.*SentencePieceTokenizer"):
        build_tokenizer("Bogus")
    with pytest.raises(ValueError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer")
    with pytest.raises(ValueError, match=f"--tokenizer-model {tmp_path}/no.model: no such file"):
        build_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / "no.model"))
    with pytest.raises(ValueError, match="--merge-file"):
        (tmp_path / "vocab.json").write_text("{}")
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(tmp_path / "vocab.json"))
    with pytest.raises(ValueError, match="--tokenizer-name-or-path .*downloads are disabled"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_name_or_path=str(tmp_path / "nothing"))


def test_padded_vocab_size():
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(50257, 128, 8) == 51200
    assert padded_vocab_size(512, 128, 2) == 512
    assert padded_vocab_size(258, 1) == 258
    assert padded_vocab_size(258, pad_vocab_size_to=300) == 300
    with pytest.raises(ValueError, match="--pad-vocab-size-to 200 is smaller"):
        padded_vocab_size(258, pad_vocab_size_to=200)
    with pytest.raises(ValueError, match="--pad-vocab-size-to 301 is not divisible"):
        padded_vocab_size(258, tensor_model_parallel_size=2, pad_vocab_size_to=301)


def test_null_tokenizer_reads_ids_and_rejects_out_of_range():
    import pytest
    from megatron.data.tokenizers import build_tokenizer
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert (tok.vocab_size, tok.eod, tok.pad) == (101, 100, -1)
    assert tok.tokenize("3 5 99") == [3, 5, 99] and tok.detokenize([3, 5]) == "3 5"
    with pytest.raises(ValueError, match="outside"):
        tok.tokenize("100")
    with pytest.raises(ValueError, match="--vocab-size"):
        build_tokenizer("NullTokenizer")
