"""Tokenizers behind one small interface, chosen by Megatron's `--tokenizer-type` names.

    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model="spm.model")
    tok.vocab_size, tok.eod, tok.pad (-1: none), tok.bos (None: none)
    tok.tokenize(text) -> list[int];  tok.detokenize(ids) -> str
    tok.unique_identifiers  # OrderedDict, hashed by megatron-core's dataset cache

Nothing is ever downloaded: every type reads local files only.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional

# Special tokens looked up (in this order) when a tokenizer does not declare its own.
_EOD_CANDIDATES = ("<|endoftext|>", "<eod>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128,
                      tensor_model_parallel_size: int = 1,
                      pad_vocab_size_to: Optional[int] = None) -> int:
    """Megatron's rule: round up to a multiple of divisible_by x TP, or use pad_vocab_size_to."""
    tp = tensor_model_parallel_size
    if tp < 1:
        raise ValueError(f"--tensor-model-parallel-size must be >= 1, got {tp}")
    if pad_vocab_size_to is not None:
        if pad_vocab_size_to < vocab_size:
            raise ValueError(f"--pad-vocab-size-to {pad_vocab_size_to} is smaller than the "
                             f"tokenizer's vocabulary size {vocab_size}")
        if pad_vocab_size_to % tp:
            raise ValueError(f"--pad-vocab-size-to {pad_vocab_size_to} is not divisible by "
                             f"--tensor-model-parallel-size {tp}")
        return pad_vocab_size_to
    if make_vocab_size_divisible_by < 1:
        raise ValueError("--make-vocab-size-divisible-by must be >= 1, "
                         f"got {make_vocab_size_divisible_by}")
    multiple = make_vocab_size_divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def _file_digest(paths: Iterable[str]) -> str:
    """sha256 over the tokenizer files, so a retrained model under the same path changes the hash."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        if not path.exists():
            continue
        files = sorted(f for f in path.iterdir() if f.is_file()
                       and f.suffix not in _WEIGHT_SUFFIXES) if path.is_dir() else [path]
        for f in files:
            if f.stat().st_size <= 64 * 2**20:
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class _Tokenizer:
    """Common attributes; subclasses set vocab_size/eod/pad/bos and implement (de)tokenize."""

    vocab_size: int
    eod: int
    pad: int = -1
    bos: Optional[int] = None

    def __init__(self, name: str, *paths: str):
        self.unique_identifiers = OrderedDict(
            [("class", name), ("tokenizer_path", list(paths))])
        if any(os.path.exists(p) for p in paths):
            self.unique_identifiers["files_sha256"] = _file_digest(paths)

    def tokenize(self, text: str) -> list:
        raise NotImplementedError

    def detokenize(self, ids) -> str:
        raise NotImplementedError

    def _finish(self):
        """Record the special ids; a pad that collides with eod is dropped (-1)."""
        if self.pad is None or self.pad == self.eod:
            self.pad = -1
        for name in ("vocab_size", "eod", "pad", "bos"):
            self.unique_identifiers[name] = getattr(self, name)

    def __repr__(self):
        return (f"{self.unique_identifiers['class']}(vocab_size={self.vocab_size}, "
                f"eod={self.eod}, pad={self.pad}, bos={self.bos})")


class SentencePieceTokenizer(_Tokenizer):
    """A SentencePiece model. eod: the `<eod>` piece if any, else the model's eos id.

    `tools/train_tokenizer.py` writes models whose eos piece is `<eod>` and pad piece `<pad>`,
    so both Megatron type names agree on them.
    """

    def __init__(self, model_file: str, name: str = "SentencePieceTokenizer"):
        import sentencepiece as spm

        super().__init__(name, model_file)
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
        self.vocab_size = self._sp.get_piece_size()
        eod = self._piece_id("<eod>")
        eod = eod if eod is not None else (self._sp.eos_id() if self._sp.eos_id() >= 0 else None)
        if eod is None:
            raise ValueError(f"--tokenizer-model {model_file}: the model has neither an <eod> "
                             "piece nor an eos id; train it with tools/train_tokenizer.py")
        self.eod = eod
        pad = self._sp.pad_id()
        self.pad = pad if pad >= 0 else self._piece_id("<pad>")
        self.bos = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self._finish()

    def _piece_id(self, piece: str) -> Optional[int]:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def tokenize(self, text: str) -> list:
        return self._sp.encode(text)

    def detokenize(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer(_Tokenizer):
    """A local `tokenizer.json` file (via `tokenizers`) or a local directory / cached name
    (via transformers' AutoTokenizer with local_files_only=True)."""

    def __init__(self, name_or_path: str):
        path = Path(name_or_path)
        if path.is_file():
            from tokenizers import Tokenizer

            super().__init__("HuggingFaceTokenizer", name_or_path)
            self._tok, self._fast = Tokenizer.from_file(str(path)), True
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            eod, pad, bos = None, None, None
        else:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - any load failure is a bad flag value
                raise ValueError(f"--tokenizer-name-or-path {name_or_path!r}: not a local "
                                 "tokenizer.json, a local tokenizer directory, or a name in the "
                                 f"local Hugging Face cache (downloads are disabled): {e}") from e
            super().__init__("HuggingFaceTokenizer", name_or_path)
            self._tok, self._fast = tok, False
            self.vocab_size = len(tok)
            eod, pad, bos = tok.eos_token_id, tok.pad_token_id, tok.bos_token_id
        vocab = self._tok.get_vocab()
        eod = eod if eod is not None else next(
            (vocab[t] for t in _EOD_CANDIDATES if t in vocab), None)
        if eod is None:
            raise ValueError(f"--tokenizer-name-or-path {name_or_path}: no end-of-document token "
                             f"(no eos_token, none of {', '.join(_EOD_CANDIDATES)})")
        self.eod = eod
        self.pad = pad if pad is not None else next(
            (vocab[t] for t in _PAD_CANDIDATES if t in vocab), -1)
        self.bos = bos
        self._finish()

    def tokenize(self, text: str) -> list:
        if self._fast:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.encode(text, add_special_tokens=False)

    def detokenize(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._fast:
            return self._tok.decode(ids, skip_special_tokens=False)
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class GPT2BPETokenizer(_Tokenizer):
    """GPT-2 byte-level BPE from local `vocab.json` + `merges.txt`; eod is `<|endoftext|>`."""

    def __init__(self, vocab_file: str, merge_file: str):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        super().__init__("GPT2BPETokenizer", vocab_file, merge_file)
        self._tok = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._tok.decoder = decoders.ByteLevel()
        self.vocab_size = self._tok.get_vocab_size()
        eod = self._tok.token_to_id("<|endoftext|>")
        if eod is None:
            raise ValueError(f"--vocab-file {vocab_file}: no <|endoftext|> token in the vocabulary")
        self.eod = eod
        self._finish()

    def tokenize(self, text: str) -> list:
        return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class ByteLevelTokenizer(_Tokenizer):
    """UTF-8 bytes as ids 0..255, eod=256, pad=257 (vocab 258). Needs no files."""

    def __init__(self):
        super().__init__("ByteLevelTokenizer")
        self.vocab_size, self.eod, self.pad = 258, 256, 257
        self._finish()

    def tokenize(self, text: str) -> list:
        return list(text.encode("utf-8"))

    def detokenize(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class NullTokenizer(_Tokenizer):
    """Megatron-LM's NullTokenizer: text is space-separated token ids below --vocab-size N;
    eod = N, so the vocabulary has N + 1 ids. For pre-tokenised data and benchmarks."""

    def __init__(self, vocab_size: int):
        super().__init__("NullTokenizer")
        self.vocab_size, self.eod, self.pad = vocab_size + 1, vocab_size, -1
        self._finish()

    def tokenize(self, text: str) -> list:
        ids = [int(x) for x in text.split()]
        bad = [i for i in ids if not 0 <= i < self.eod]
        if bad:
            raise ValueError(f"NullTokenizer: ids {bad[:5]} outside [0, --vocab-size {self.eod})")
        return ids

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HuggingFaceTokenizer",
                   "GPT2BPETokenizer", "ByteLevelTokenizer", "NullTokenizer")


def _need_file(flag: str, value: Optional[str], tokenizer_type: str, directory_ok=False) -> str:
    if not value:
        raise ValueError(f"--tokenizer-type {tokenizer_type} needs {flag}")
    if not (os.path.isfile(value) or (directory_ok and os.path.isdir(value))):
        raise ValueError(f"{flag} {value}: no such file")
    return value


def build_tokenizer(tokenizer_type: str, *, tokenizer_model: Optional[str] = None,
                    tokenizer_name_or_path: Optional[str] = None, vocab_file: Optional[str] = None,
                    merge_file: Optional[str] = None, vocab_size: Optional[int] = None
                    ) -> _Tokenizer:
    """Build a tokenizer from Megatron's flags (see module docstring)."""
    if tokenizer_type == "NullTokenizer":
        if not vocab_size or vocab_size < 1:
            raise ValueError("--tokenizer-type NullTokenizer needs --vocab-size N (ids 0..N-1)")
        return NullTokenizer(vocab_size)
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        model = _need_file("--tokenizer-model", tokenizer_model, tokenizer_type)
        return SentencePieceTokenizer(model, name=tokenizer_type)
    if tokenizer_type == "HuggingFaceTokenizer":
        if not tokenizer_name_or_path:
            raise ValueError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-name-or-path")
        return HuggingFaceTokenizer(tokenizer_name_or_path)
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(_need_file("--vocab-file", vocab_file, tokenizer_type),
                                _need_file("--merge-file", merge_file, tokenizer_type))
    if tokenizer_type == "ByteLevelTokenizer":
        return ByteLevelTokenizer()
    raise ValueError(f"--tokenizer-type {tokenizer_type!r} is not supported; "
                     f"choose one of: {', '.join(TOKENIZER_TYPES)}")
