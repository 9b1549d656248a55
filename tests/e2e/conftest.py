"""Shared set-up of the end-to-end tests: one tiny real corpus, tokenizer and indexed dataset."""
import sys

import pytest

from cli_runner import run


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    corpus = d / "stdlib.jsonl"
    run([sys.executable, "tools/build_stdlib_corpus.py", "--output", str(corpus),
         "--max-mb", "0.4"])
    run([sys.executable, "tools/train_tokenizer.py", "--input", str(corpus), "--json-keys",
         "text", "--vocab-size", "500", "--model-type", "bpe", "--output-prefix",
         str(d / "spm")])
    run([sys.executable, "tools/preprocess_data.py", "--input", str(corpus), "--json-keys",
         "text", "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
         str(d / "spm.model"), "--append-eod", "--workers", "2", "--output-prefix",
         str(d / "stdlib")])
    return {"dir": d, "prefix": str(d / "stdlib_text_document"), "spm": str(d / "spm.model")}
