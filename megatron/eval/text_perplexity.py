"""Perplexity and bits-per-byte of documents, with sliding windows for long ones.

    stats = text_perplexity(runner, tokenizer, texts, stride=256, batch_size=8)
    stats.perplexity, stats.bits_per_byte

Each document is tokenized, prefixed with EOD (as in the training data, where EOD ends the
previous document) and all its tokens are scored; documents longer than the model's length go
through scoring.sliding_windows: each window advances by `stride` tokens, so every token after
the first window sees at least seq_length - stride tokens of context (stride = seq_length:
disjoint windows). BPB = total NLL in nats / (ln 2 x UTF-8 bytes of the original texts).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from megatron.eval.scoring import score_windows, sliding_windows


@dataclass
class PerplexityStats:
    nll: float       # total negative log-likelihood, nats
    tokens: int      # scored tokens
    bytes: int       # UTF-8 bytes of the texts
    documents: int

    @property
    def nats_per_token(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * max(self.bytes, 1))

    def to_dict(self) -> dict:
        return dict(asdict(self), nats_per_token=self.nats_per_token, perplexity=self.perplexity,
                    bits_per_byte=self.bits_per_byte)


def token_perplexity(runner, docs: Iterable[list], eod: int, stride: Optional[int] = None,
                     batch_size: int = 8, byte_counts: Optional[list] = None) -> PerplexityStats:
    """docs: token lists (EOD is prepended to each). byte_counts: UTF-8 bytes per document."""
    windows, n_tokens, n_docs = [], 0, 0
    for doc in docs:
        if not doc:
            continue
        windows += sliding_windows([eod] + list(doc), 1, runner.max_length, stride)
        n_tokens, n_docs = n_tokens + len(doc), n_docs + 1
    nll = -sum(lp for lp, _ in score_windows(runner, windows, batch_size, eod))
    return PerplexityStats(nll, n_tokens, sum(byte_counts or []), n_docs)


def text_perplexity(runner, tokenizer, texts: Iterable[str], stride: Optional[int] = None,
                    batch_size: int = 8) -> PerplexityStats:
    texts = [t for t in texts if t]
    return token_perplexity(runner, [tokenizer.tokenize(t) for t in texts], tokenizer.eod, stride,
                            batch_size, [len(t.encode("utf-8")) for t in texts])


def read_texts(path: str, json_key: str = "text") -> list:
    """Documents of a .jsonl file (one JSON object per line, text under json_key) or a text file
    (the whole file is one document)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path}: no such file")
    if not path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                obj = json.loads(line)
                if json_key not in obj:
                    raise KeyError(f"--input {path} line {n}: no key {json_key!r} (--json-key); "
                                   f"keys: {sorted(obj)}")
                texts.append(obj[json_key])
    return texts


def indexed_documents(prefix: str, eod: int, limit: Optional[int] = None) -> list:
    """Token lists of a Megatron .bin/.idx dataset's documents, a trailing EOD removed."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
        raise FileNotFoundError(f"--input {prefix}: no {prefix}.bin/.idx")
    ds = IndexedDataset(prefix, mmap=True)
    docs = []
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        doc = [int(t) for t in ds[i]]
        docs.append(doc[:-1] if doc and doc[-1] == eod else doc)
    return docs
