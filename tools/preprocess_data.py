"""Tokenize documents into megatron-core indexed datasets (Megatron's preprocess_data.py flags).

    python tools/preprocess_data.py --input data/*.jsonl --json-keys text \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok/spm.model \
        --append-eod --workers 8 --output-prefix data/corpus

writes data/corpus_text_document.{bin,idx}: one document per input line (or row), in input
order whatever --workers/--partitions. Inputs: .jsonl/.json (JSON lines), .jsonl.gz,
.jsonl.zst (needs `zstandard`), globs of them, directories saved by `datasets`'
save_to_disk, .parquet files and .arrow files (as written by `datasets`).

Bad input stops the run with file:line and the reason, unless --skip-bad-lines, which skips
and counts: malformed JSON, a line that is not valid UTF-8 (never silently replaced), a missing
key or a non-string value. Documents with no tokens are skipped and counted. Outputs are
written under temporary names and renamed into place only at the end; existing outputs are
refused unless --overwrite.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402

# megatron-core's package import warns about optional GPU libraries; irrelevant here.
from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.data.indexed_io import (  # noqa: E402
    AtomicDatasetWriter,
    dtype_for_vocab,
    existing_outputs,
    merge_datasets,
)
from megatron.data.tokenizers import TOKENIZER_TYPES, build_tokenizer  # noqa: E402

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
TABLE_SUFFIXES = (".parquet", ".arrow")
OK, BAD, FATAL = 0, 1, 2


def parse_args(argv=None):
    p = tool_parser(__doc__)
    g = p.add_argument_group("input")
    g.add_argument("--input", nargs="+", required=True,
                   help="files, globs (quote them) or save_to_disk directories")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys (columns) to tokenize; one output dataset each (default: text)")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping")
    g.add_argument("--split-sentences", action="store_true",
                   help="not supported (Megatron's NLTK sentence splitting); errors if given")
    g.add_argument("--keep-newlines", action="store_true",
                   help="accepted for compatibility; no effect (only used with sentence "
                        "splitting, which is not supported: newlines are always kept)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", help="SentencePiece model file")
    g.add_argument("--tokenizer-name-or-path", help="local tokenizer.json or directory")
    g.add_argument("--vocab-file", help="GPT-2 vocab.json")
    g.add_argument("--merge-file", help="GPT-2 merges.txt")
    g.add_argument("--append-eod", action="store_true", help="end each document with eod")
    g = p.add_argument_group("output")
    g.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_{key}_document.bin/.idx per json key")
    g.add_argument("--dataset-impl", default="mmap", choices=["mmap"],
                   help="accepted for compatibility; only mmap exists")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--partitions", type=int, default=1,
                   help="split the input into N contiguous parts written separately, then "
                        "merged in order (bounds per-part index memory)")
    g.add_argument("--chunksize", type=int, default=64, help="lines sent to a worker at once")
    g.add_argument("--log-interval", type=int, default=10000, help="progress every N documents")
    args = p.parse_args(argv)
    if args.split_sentences:
        p.error("--split-sentences is not supported: documents are tokenized whole")
    for flag in ("workers", "partitions", "chunksize", "log_interval"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    return args


# ---------------------------------------------------------------------------------- inputs

def expand_inputs(inputs) -> list:
    """Paths of all inputs (globs expanded, sorted), each checked for a supported kind."""
    paths = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise ValueError(f"--input {item}: the pattern matches no files")
        for path in matches:
            if os.path.isdir(path):
                if not any(os.path.exists(os.path.join(path, f)) for f in
                           ("dataset_info.json", "state.json", "dataset_dict.json")):
                    raise ValueError(f"--input {path}: a directory, but not one written by "
                                     "datasets' save_to_disk")
            elif not os.path.isfile(path):
                raise ValueError(f"--input {path}: no such file")
            elif not path.endswith(JSONL_SUFFIXES + TABLE_SUFFIXES):
                raise ValueError(f"--input {path}: unsupported file type; expected one of "
                                 f"{', '.join(JSONL_SUFFIXES + TABLE_SUFFIXES)} or a "
                                 "save_to_disk directory")
            if path.endswith((".zst",)):
                try:
                    import zstandard  # noqa: F401
                except ImportError:
                    raise ValueError(f"--input {path}: reading .zst needs the `zstandard` "
                                     "package (pip install zstandard)") from None
            paths.append(path)
    return paths


def _open_lines(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _load_table(path: str, keys):
    """A `datasets.Dataset` for a save_to_disk directory or an .arrow file; a pyarrow
    ParquetFile for .parquet. Missing columns are an error."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
    else:
        import datasets

        try:
            table = (datasets.Dataset.from_file(path) if path.endswith(".arrow")
                     else datasets.load_from_disk(path))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"--input {path}: cannot be read by datasets: {e}") from e
        if isinstance(table, datasets.DatasetDict):
            if len(table) != 1:
                raise ValueError(f"--input {path}: a DatasetDict with splits {list(table)}; "
                                 f"pass one split's directory, e.g. {path}/{next(iter(table))}")
            table = next(iter(table.values()))
        columns = table.column_names
    missing = [k for k in keys if k not in columns]
    if missing:
        raise ValueError(f"--input {path}: no column {', '.join(map(repr, missing))} "
                         f"(--json-keys); columns are {columns}")
    return table


def iter_records(paths, keys):
    """(source index, line or row number (1-based), payload): payload is a raw JSON line
    (bytes) or a dict of the keys for table rows. Blank lines are left out."""
    for src, path in enumerate(paths):
        if path.endswith(JSONL_SUFFIXES):
            with _open_lines(path) as f:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield src, line_no, line
            continue
        table = _load_table(path, keys)
        if path.endswith(".parquet"):
            batches = (b.to_pylist() for b in table.iter_batches(batch_size=1024, columns=keys))
        else:
            table = table.select_columns(keys)
            batches = ([dict(zip(keys, row)) for row in zip(*(batch[k] for k in keys))]
                       for batch in table.iter(batch_size=1024))
        row = 0
        for batch in batches:
            for record in batch:
                row += 1
                yield src, row, record


def count_records(paths, keys) -> int:
    """Number of records iter_records yields (needed to cut --partitions)."""
    total = 0
    for path in paths:
        if path.endswith(JSONL_SUFFIXES):
            with _open_lines(path) as f:
                total += sum(1 for line in f if line.strip())
        else:
            table = _load_table(path, keys)
            total += table.metadata.num_rows if path.endswith(".parquet") else len(table)
    return total


def location(path: str, number: int) -> str:
    return f"{path}:{number}" if path.endswith(JSONL_SUFFIXES) else f"{path} row {number}"


# ---------------------------------------------------------------------------------- encoding

class Encoder:
    """Turns one record into token arrays per key; built in each worker by `initialize`."""

    def __init__(self, tokenizer_kwargs: dict, keys, append_eod: bool):
        self.tokenizer_kwargs, self.keys, self.append_eod = tokenizer_kwargs, keys, append_eod
        self.tokenizer = None

    def __getstate__(self):  # workers build their own tokenizer
        return {**self.__dict__, "tokenizer": None}

    def initialize(self):
        self.tokenizer = build_tokenizer(**self.tokenizer_kwargs)
        return self

    def encode(self, record):
        """-> (src, number, status, message, nbytes, {key: int32 array})."""
        src, number, payload = record
        raw = isinstance(payload, bytes)
        nbytes = len(payload) if raw else 0
        if raw:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                return src, number, BAD, f"not valid UTF-8 (byte {e.start}: {e.reason})", nbytes, {}
            try:
                payload = json.loads(text.rstrip("\r\n"), strict=False)
            except json.JSONDecodeError as e:
                return (src, number, BAD, f"malformed JSON at column {e.colno}: {e.msg}",
                        nbytes, {})
            if not isinstance(payload, dict):
                return (src, number, BAD, f"expected a JSON object, got {type(payload).__name__}",
                        nbytes, {})
        out = {}
        tok = self.tokenizer
        for key in self.keys:
            if key not in payload:
                return (src, number, BAD, f"missing key {key!r} (keys: {sorted(payload)})",
                        nbytes, {})
            value = payload[key]
            if not isinstance(value, str):
                return (src, number, BAD,
                        f"key {key!r} is {type(value).__name__}, expected a string", nbytes, {})
            if not raw:
                nbytes += len(value.encode("utf-8", errors="surrogatepass"))
            try:
                ids = numpy.asarray(tok.tokenize(value), dtype=numpy.int64)
            except Exception as e:  # noqa: BLE001 - e.g. lone surrogates from JSON escapes
                return src, number, BAD, f"key {key!r} cannot be tokenized: {e}", nbytes, {}
            if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
                bad = int(ids.max() if ids.max() >= tok.vocab_size else ids.min())
                return (src, number, FATAL, f"the tokenizer produced id {bad}, outside its "
                        f"vocabulary of {tok.vocab_size}", nbytes, {})
            if ids.size and self.append_eod:
                ids = numpy.append(ids, tok.eod)
            out[key] = ids.astype(numpy.int32)
        return src, number, OK, None, nbytes, out


_WORKER_ENCODER = None  # one per worker process, set by _init_worker


def _init_worker(encoder: Encoder):
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder.initialize()


def _encode(record):
    return _WORKER_ENCODER.encode(record)


# ---------------------------------------------------------------------------------- writing

def output_prefix(prefix: str, key: str) -> str:
    return f"{prefix}_{key}_document"


class Progress:
    def __init__(self, interval: int):
        self.interval, self.start = interval, time.time()
        self.docs = self.tokens = self.nbytes = 0

    def update(self, tokens: int, nbytes: int):
        self.docs += 1
        self.tokens += tokens
        self.nbytes += nbytes
        if self.docs % self.interval == 0:
            dt = max(time.time() - self.start, 1e-9)
            print(f"processed {self.docs} documents ({self.docs / dt:.1f} docs/s, "
                  f"{self.tokens / dt:.0f} tokens/s, {self.nbytes / dt / 2**20:.2f} MB/s)",
                  file=sys.stderr, flush=True)


def run(args) -> dict:
    """Tokenize args.input into the outputs; returns the summary. Raises ValueError on bad
    input (nothing is left under the final names)."""
    paths = expand_inputs(args.input)
    finals = {k: output_prefix(args.output_prefix, k) for k in args.json_keys}
    if len(set(args.json_keys)) != len(args.json_keys):
        raise ValueError(f"--json-keys {args.json_keys}: repeated key")
    existing = existing_outputs(list(finals.values()))
    if existing and not args.overwrite:
        raise ValueError(f"output files exist: {', '.join(existing)} (pass --overwrite to "
                         "replace them)")
    tokenizer_kwargs = dict(tokenizer_type=args.tokenizer_type,
                            tokenizer_model=args.tokenizer_model,
                            tokenizer_name_or_path=args.tokenizer_name_or_path,
                            vocab_file=args.vocab_file, merge_file=args.merge_file)
    encoder = Encoder(tokenizer_kwargs, args.json_keys, args.append_eod).initialize()
    dtype = dtype_for_vocab(encoder.tokenizer.vocab_size)

    n_parts, bounds = 1, [None]  # bounds: record index at which each next partition starts
    if args.partitions > 1:
        total = count_records(paths, args.json_keys)
        n_parts = max(1, min(args.partitions, total))  # no empty parts
        bounds = [total * i // n_parts for i in range(1, n_parts)] + [None]
    part_prefixes = {k: [f"{p}.tmp-{os.getpid()}-part{i}" for i in range(n_parts)]
                     for k, p in finals.items()}
    summary = dict(documents=0, tokens=0, bad_lines=0, empty={k: 0 for k in finals},
                   inputs=paths, outputs=[], dtype=numpy.dtype(dtype).name)
    progress = Progress(args.log_interval)
    try:
        with contextlib.ExitStack() as stack:
            if args.workers > 1:
                ctx = (multiprocessing.get_context("fork")
                       if "fork" in multiprocessing.get_all_start_methods() else multiprocessing)
                pool = stack.enter_context(ctx.Pool(args.workers, initializer=_init_worker,
                                                    initargs=(encoder,)))
                results = pool.imap(_encode, iter_records(paths, args.json_keys), args.chunksize)
            else:
                results = map(encoder.encode, iter_records(paths, args.json_keys))
            part, writers = 0, None
            for index, (src, number, status, message, nbytes, out) in enumerate(results):
                while writers is None or (bounds[part] is not None and index >= bounds[part]):
                    if writers is not None:
                        for w in writers.values():
                            w.commit()
                        part += 1
                    prefixes = {k: (part_prefixes[k][part] if n_parts > 1 else finals[k])
                                for k in finals}
                    writers = {k: stack.enter_context(AtomicDatasetWriter(p, dtype))
                               for k, p in prefixes.items()}
                if status != OK:
                    where = location(paths[src], number)
                    if status == FATAL or not args.skip_bad_lines:
                        hint = "" if status == FATAL else " (--skip-bad-lines skips such lines)"
                        raise ValueError(f"{where}: {message}{hint}")
                    summary["bad_lines"] += 1
                    progress.update(0, nbytes)
                    continue
                tokens = 0
                for key, ids in out.items():
                    if ids.size == 0:
                        summary["empty"][key] += 1
                        continue
                    writers[key].add_document(ids)
                    tokens += int(ids.size)
                summary["documents"] += tokens > 0
                summary["tokens"] += tokens
                progress.update(tokens, nbytes)
            if writers is None:
                writers = {k: stack.enter_context(AtomicDatasetWriter(
                    part_prefixes[k][0] if n_parts > 1 else finals[k], dtype))
                    for k in finals}
            for w in writers.values():
                w.commit()
            part += 1
        if n_parts > 1:
            for key, final in finals.items():
                summary["outputs"] += merge_datasets(part_prefixes[key][:part], final)
        else:
            for final in finals.values():
                summary["outputs"] += [final + ".bin", final + ".idx"]
    finally:
        for prefixes in part_prefixes.values():
            for p in prefixes:
                for path in (p + ".bin", p + ".idx"):
                    if os.path.exists(path):
                        os.remove(path)
    summary["seconds"] = round(time.time() - progress.start, 3)
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        summary = run(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    empty = ", ".join(f"{k}: {n}" for k, n in summary["empty"].items())
    print(f"done: {summary['documents']} documents, {summary['tokens']} tokens "
          f"({summary['dtype']}), empty documents skipped ({empty}), bad lines skipped "
          f"{summary['bad_lines']}, {summary['seconds']:.1f} s; wrote "
          f"{', '.join(summary['outputs'])}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
