"""tools/preprocess_data.py: outputs megatron-core reads back exactly, and every bad input's error."""
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron.data.indexed_io import dtype_for_vocab
from megatron.data.tokenizers import build_tokenizer

from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[2]


pre = load_tool("preprocess_data")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Docstring documents (plus non-ASCII, an empty one) and a SentencePiece model on them."""
    import argparse, collections, inspect, pathlib, textwrap  # noqa: E401

    d = tmp_path_factory.mktemp("pre")
    texts = [inspect.getdoc(obj) for m in (argparse, collections, pathlib, textwrap)
             for name, obj in inspect.getmembers(m) if inspect.getdoc(obj) and name[0] != "_"]
    texts = texts[:150] + ["héllo wörld ✓ 日本語", ""]
    with open(d / "docs.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "title": f"doc {i}"}) + "\n")
    load_tool("train_tokenizer").main(["--input", str(d / "docs.jsonl"), "--vocab-size", "600",
                                       "--output-prefix", str(d / "spm")])
    return d, texts, str(d / "spm.model")


def preprocess(inputs, out, model, *extra):
    inputs = [inputs] if isinstance(inputs, (str, Path)) else inputs
    return pre.main(["--input", *map(str, inputs), "--output-prefix", str(out),
                     "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model,
                     "--append-eod", *extra])


def read_bytes(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def write_jsonl(path, lines):
    Path(path).write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n"
                                    for line in lines))
    return path


def test_megatron_core_reads_back_the_tokens(data, tmp_path):
    d, texts, model = data
    summary = preprocess(d / "docs.jsonl", tmp_path / "out", model, "--json-keys", "text", "title")
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=model)
    expected = [tok.tokenize(t) + [tok.eod] for t in texts if t]
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert len(ds) == len(expected) and ds.index.dtype == numpy.uint16
    assert all(ds[i].tolist() == e for i, e in enumerate(expected))
    assert ds.document_indices.tolist() == list(range(len(expected) + 1))
    titles = IndexedDataset(str(tmp_path / "out_title_document"))
    assert tok.detokenize(titles[3][:-1]) == "doc 3" and len(titles) == len(texts)
    assert summary["empty"] == {"text": 1, "title": 0} and summary["bad_lines"] == 0
    assert summary["tokens"] == sum(map(len, expected)) + sum(len(t) for t in titles)


def test_same_bytes_as_megatron_core_builder_and_header(data, tmp_path):
    d, texts, model = data
    preprocess(d / "docs.jsonl", tmp_path / "ours", model)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=model)
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=numpy.uint16)
    for t in filter(None, texts):
        builder.add_item(torch.tensor(tok.tokenize(t) + [tok.eod]))
        builder.end_document()
    builder.finalize(str(tmp_path / "ref.idx"))
    assert read_bytes(tmp_path / "ours_text_document") == read_bytes(tmp_path / "ref")

    idx = Path(tmp_path / "ours_text_document.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", idx[9:17]) == (1,)  # version
    assert idx[17] == 8  # DType.uint16
    n = len(texts) - 1
    assert struct.unpack("<QQ", idx[18:34]) == (n, n + 1)  # sequences, document boundaries


def test_workers_and_partitions_give_identical_output(data, tmp_path):
    d, _, model = data
    preprocess(d / "docs.jsonl", tmp_path / "w1", model, "--workers", "1")
    reference = read_bytes(tmp_path / "w1_text_document")
    for name, extra in [("w2", ["--workers", "2", "--chunksize", "7"]),
                        ("p2", ["--partitions", "2"]),
                        ("p3w2", ["--partitions", "3", "--workers", "2"])]:
        preprocess(d / "docs.jsonl", tmp_path / name, model, *extra)
        assert read_bytes(tmp_path / f"{name}_text_document") == reference, name
    assert sorted(os.listdir(tmp_path)) == sorted(f"{n}_text_document.{e}" for e in ("bin", "idx")
                                                  for n in ("w1", "w2", "p2", "p3w2"))
    two = write_jsonl(tmp_path / "two.jsonl", ['{"text": "a b"}', '{"text": "c"}'])
    preprocess(two, tmp_path / "one_part", model)
    preprocess(two, tmp_path / "many_parts", model, "--partitions", "5")  # more parts than lines
    assert read_bytes(tmp_path / "many_parts_text_document") == read_bytes(
        tmp_path / "one_part_text_document")


def test_all_input_formats_agree(data, tmp_path):
    import datasets

    d, texts, model = data
    preprocess(d / "docs.jsonl", tmp_path / "ref", model)
    reference = read_bytes(tmp_path / "ref_text_document")
    lines = (d / "docs.jsonl").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.jsonl").write_bytes(b"".join(lines[:half]) + b"\n\n")  # blank lines ignored
    (tmp_path / "in/b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[half:])))
    ds = datasets.Dataset.from_list([{"text": t, "other": 1} for t in texts])
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "docs.parquet"))
    arrow = next((tmp_path / "hf").glob("*.arrow"))
    for name, inputs in [("glob", [tmp_path / "in/*.json*"]), ("hf", [tmp_path / "hf"]),
                         ("parquet", [tmp_path / "docs.parquet"]), ("arrow", [arrow])]:
        preprocess(inputs, tmp_path / name, model)
        assert read_bytes(tmp_path / f"{name}_text_document") == reference, name


def test_malformed_json_stops_or_is_skipped(data, tmp_path):
    _, _, model = data
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "fine"}', '{"text": "broken', '[1, 2]'])
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: malformed JSON.*--skip-bad-lines"):
        preprocess(bad, tmp_path / "out", model)
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # nothing half-written, no temporary left
    summary = preprocess(bad, tmp_path / "out", model, "--skip-bad-lines")
    assert (summary["documents"], summary["bad_lines"]) == (1, 2)
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == 1


def test_missing_key_and_non_string_value(data, tmp_path):
    _, _, model = data
    bad = write_jsonl(tmp_path / "k.jsonl", ['{"text": "a"}', '{"body": "b"}'])
    with pytest.raises(SystemExit, match=r"k.jsonl:2: missing key 'text' \(keys: \['body'\]\)"):
        preprocess(bad, tmp_path / "out", model)
    bad = write_jsonl(tmp_path / "n.jsonl", ['{"text": null}'])
    with pytest.raises(SystemExit, match=r"n.jsonl:1: key 'text' is NoneType, expected a string"):
        preprocess(bad, tmp_path / "out", model)


def test_non_utf8_line_stops_or_is_skipped(data, tmp_path):
    _, _, model = data
    bad = write_jsonl(tmp_path / "u.jsonl", ['{"text": "ok"}', b'{"text": "caf\xe9"}\n'])
    with pytest.raises(SystemExit, match=r"u.jsonl:2: not valid UTF-8 \(byte 13"):
        preprocess(bad, tmp_path / "out", model)
    assert preprocess(bad, tmp_path / "out", model, "--skip-bad-lines")["bad_lines"] == 1


def test_existing_outputs_are_refused_and_left_untouched(data, tmp_path):
    _, _, model = data
    first = write_jsonl(tmp_path / "1.jsonl", ['{"text": "first"}'])
    second = write_jsonl(tmp_path / "2.jsonl", ['{"text": "second one"}'])
    preprocess(first, tmp_path / "out", model)
    old = read_bytes(tmp_path / "out_text_document")
    with pytest.raises(SystemExit, match=r"output files exist: .*out_text_document.bin.*--overwrite"):
        preprocess(second, tmp_path / "out", model)
    assert read_bytes(tmp_path / "out_text_document") == old
    broken = write_jsonl(tmp_path / "3.jsonl", ['{"text": "x"}', "oops"])
    with pytest.raises(SystemExit, match="3.jsonl:2"):  # a failed --overwrite keeps the old pair
        preprocess(broken, tmp_path / "out", model, "--overwrite")
    assert read_bytes(tmp_path / "out_text_document") == old
    preprocess(second, tmp_path / "out", model, "--overwrite")
    assert read_bytes(tmp_path / "out_text_document") != old
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_vocabulary_and_token_range_checks():
    assert dtype_for_vocab(65499) == numpy.uint16 and dtype_for_vocab(65500) == numpy.int32
    with pytest.raises(ValueError, match="70000 tokens does not fit in uint16"):
        dtype_for_vocab(70000, numpy.uint16)

    class Liar:  # a tokenizer producing an id beyond its vocabulary
        vocab_size, eod = 10, 9

        def tokenize(self, text):
            return [3, 12]

    encoder = pre.Encoder({}, ["text"], append_eod=True)
    encoder.tokenizer = Liar()
    status, message = encoder.encode((0, 1, b'{"text": "x"}'))[2:4]
    assert status == pre.FATAL and "id 12, outside its vocabulary of 10" in message


def test_unsupported_inputs_and_flags(data, tmp_path):
    _, _, model = data
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SystemExit, match=r"--input .*x.csv: unsupported file type"):
        preprocess(tmp_path / "x.csv", tmp_path / "o", model)
    with pytest.raises(SystemExit, match="matches no files"):
        preprocess(tmp_path / "none*.jsonl", tmp_path / "o", model)
    with pytest.raises(SystemExit):
        preprocess(tmp_path / "x.csv", tmp_path / "o", model, "--split-sentences")
    (tmp_path / "x.jsonl.zst").write_bytes(b"")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="needs the `zstandard` package"):
            preprocess(tmp_path / "x.jsonl.zst", tmp_path / "o", model)


def test_runs_as_script_from_repo_root(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", ['{"text": "héllo"}', '{"text": ""}'])
    out = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(src),
                          "--output-prefix", str(tmp_path / "s"), "--tokenizer-type",
                          "ByteLevelTokenizer", "--append-eod"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 documents" in out.stderr and "text: 1" in out.stderr
    ds = IndexedDataset(str(tmp_path / "s_text_document"))  # keep it alive: items view its mmap
    assert ds[0].tolist() == [104, 0xC3, 0xA9, 108, 108, 111, 256]
