"""Train a SentencePiece model from .jsonl(.gz) documents or plain text files.

    python tools/train_tokenizer.py --input data/*.jsonl --json-keys text \
        --vocab-size 32000 --model-type bpe --output-prefix tok/spm

writes tok/spm.model and tok/spm.vocab. Special ids (what megatron/data/tokenizers.py's
SentencePieceTokenizer reads): 0 <unk>, 1 <s> (bos), 2 <eod> (eos, the end-of-document id),
3 <pad>. Text is not normalized and whitespace is kept, so detokenize(tokenize(t)) == t;
with --byte-fallback (default) no character is ever unknown. Same inputs + --seed: same model.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402

SPECIAL = dict(unk_id=0, unk_piece="<unk>", bos_id=1, bos_piece="<s>",
               eos_id=2, eos_piece="<eod>", pad_id=3, pad_piece="<pad>")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True,
                   help=".jsonl/.jsonl.gz/.json files (documents) or any other file (plain text, "
                        "one sentence per line)")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys of the JSON objects whose text is used (default: text)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--byte-fallback", action=argparse.BooleanOptionalAction, default=True,
                   help="spell unknown characters as UTF-8 bytes (default: on)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="train on at most this many lines, sampled uniformly with --seed "
                        "(default: all)")
    p.add_argument("--max-sentence-length", type=int, default=16384,
                   help="longer lines (in bytes) are skipped by sentencepiece")
    p.add_argument("--split-digits", action="store_true", help="split numbers into digits")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num-threads", type=int, default=1,
                   help="sentencepiece trainer threads (default 1: bit-identical results)")
    p.add_argument("--verbose", action="store_true", help="show sentencepiece's own log")
    return p.parse_args(argv)


def _open_text(path: str):
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")


def iter_lines(paths, json_keys):
    """Non-empty lines of the documents (JSON lines files) or of the plain text files."""
    for path in paths:
        is_json = path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz"))
        with _open_text(path) as f:
            try:
                for line_no, line in enumerate(f, 1):
                    if not is_json:
                        texts = [line]
                    elif not line.strip():
                        continue
                    else:
                        try:
                            obj = json.loads(line)
                            texts = [obj[k] for k in json_keys]
                        except (json.JSONDecodeError, KeyError, TypeError) as e:
                            raise SystemExit(f"error: {path}:{line_no}: bad JSON line or missing "
                                             f"key {json_keys} ({type(e).__name__}: {e})")
                    for text in texts:
                        if not isinstance(text, str):
                            raise SystemExit(f"error: {path}:{line_no}: value is "
                                             f"{type(text).__name__}, expected a string")
                        for sentence in text.split("\n"):
                            if sentence.strip():
                                yield sentence
            except UnicodeDecodeError as e:
                raise SystemExit(f"error: {path}: not valid UTF-8 ({e})")


def sample_lines(lines, k: int, seed: int) -> list:
    """Reservoir sample of k lines, in input order; deterministic for a given seed."""
    rng = random.Random(seed)
    reservoir = []
    for i, line in enumerate(lines):
        if i < k:
            reservoir.append((i, line))
        else:
            j = rng.randint(0, i)
            if j < k:
                reservoir[j] = (i, line)
    return [line for _, line in sorted(reservoir)]


def train(args) -> list:
    import sentencepiece as spm

    for path in args.input:
        if not os.path.isfile(path):
            raise SystemExit(f"error: --input {path}: no such file")
    lines = iter_lines(args.input, args.json_keys)
    if args.max_sentences:
        lines = iter(sample_lines(lines, args.max_sentences, args.seed))
    Path(args.output_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(args.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_prefix=args.output_prefix,
            vocab_size=args.vocab_size, model_type=args.model_type,
            character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=args.split_digits,
            max_sentence_length=args.max_sentence_length, num_threads=args.num_threads,
            hard_vocab_limit=True, minloglevel=0 if args.verbose else 2, **SPECIAL)
    except RuntimeError as e:
        raise SystemExit(f"error: sentencepiece training failed: {e}")
    return [args.output_prefix + ".model", args.output_prefix + ".vocab"]


def main(argv=None):
    args = parse_args(argv)
    written = train(args)
    print(f"wrote {written[0]} and {written[1]} ({args.model_type}, vocab {args.vocab_size}; "
          f"eod=<eod> id {SPECIAL['eos_id']}, pad=<pad> id {SPECIAL['pad_id']}); use with "
          f"--tokenizer-type SentencePieceTokenizer --tokenizer-model {written[0]}")
    return written


if __name__ == "__main__":
    main()
