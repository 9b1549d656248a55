"""tools/merge_datasets.py: merging equals one run over all inputs; mismatches are refused."""
from pathlib import Path

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from tool_loader import load_tool



pre, merge = load_tool("preprocess_data"), load_tool("merge_datasets")
DOCS = ['{"text": "%s"}' % t for t in ["first doc", "zweites Dokument ✓", "third", "4", "fifth!"]]


def preprocess(src, prefix):
    pre.main(["--input", str(src), "--output-prefix", str(prefix),
              "--tokenizer-type", "ByteLevelTokenizer", "--append-eod"])
    return f"{prefix}_text_document"


def read_bytes(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


@pytest.fixture
def shards(tmp_path):
    (tmp_path / "all.jsonl").write_text("\n".join(DOCS) + "\n")
    (tmp_path / "a.jsonl").write_text("\n".join(DOCS[:2]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(DOCS[2:]) + "\n")
    (tmp_path / "shards").mkdir()
    whole = preprocess(tmp_path / "all.jsonl", tmp_path / "all")
    a = preprocess(tmp_path / "a.jsonl", tmp_path / "shards/a")
    b = preprocess(tmp_path / "b.jsonl", tmp_path / "shards/b")
    return tmp_path, whole, a, b


def test_merge_equals_single_run(shards):
    tmp_path, whole, a, b = shards
    merge.main(["--input", a, b, "--output-prefix", str(tmp_path / "ab")])
    assert read_bytes(tmp_path / "ab") == read_bytes(whole)
    merge.main(["--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "dir")])
    assert read_bytes(tmp_path / "dir") == read_bytes(whole)  # directory: sorted by name


def test_merge_refuses_mismatched_dtypes_and_existing_output(shards):
    tmp_path, whole, a, _ = shards
    builder = IndexedDatasetBuilder(str(tmp_path / "wide.bin"), dtype=numpy.int32)
    builder.add_item(torch.tensor([1, 70000]))
    builder.end_document()
    builder.finalize(str(tmp_path / "wide.idx"))
    with pytest.raises(SystemExit, match=r"different dtypes: .*a_text_document \(uint16\), "
                                         r".*wide \(int32\)"):
        merge.main(["--input", a, str(tmp_path / "wide"), "--output-prefix", str(tmp_path / "x")])
    assert not list(tmp_path.glob("x*"))
    old = read_bytes(whole)
    with pytest.raises(SystemExit, match="output files exist.*--overwrite"):
        merge.main(["--input", a, "--output-prefix", whole])
    assert read_bytes(whole) == old
    with pytest.raises(SystemExit, match="is also an input"):
        merge.main(["--input", a, whole, "--output-prefix", whole, "--overwrite"])
    with pytest.raises(SystemExit, match="nope.idx does not exist"):
        merge.main(["--input", str(tmp_path / "nope"), "--output-prefix", str(tmp_path / "y")])
