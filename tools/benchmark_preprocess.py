"""Time tools/preprocess_data.py against Megatron-LM's, side by side, on the same input.

    python tools/benchmark_preprocess.py --input corpus.jsonl \\
        --tokenizer-model spm.model --workers 1 2 \\
        --megatron-lm /path/to/Megatron-LM [--megatron-pythonpath EXTRA]

For each worker count, runs ours and (with --megatron-lm) Megatron-LM's tools/preprocess_data.py
with the same SentencePiece model and `--append-eod`, one after the other, and prints a Markdown
table of wall time, documents/s, tokens/s and MB/s (in total and per worker). It then checks the
two outputs hold the same documents token for token (read back with megatron-core's reader),
so the timing compares equal work. Megatron-LM needs its own checkout (its `megatron/training`
is not in the megatron-core wheel); `--megatron-pythonpath` adds what its imports need.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(name: str, cmd: list, cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return seconds


def read_documents(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(prefix, mmap=True)


def same_documents(a: str, b: str) -> tuple[bool, str]:
    import numpy
    x, y = read_documents(a), read_documents(b)
    if len(x) != len(y):
        return False, f"{len(x)} vs {len(y)} sequences"
    for i in range(len(x)):
        if not numpy.array_equal(x[i], y[i]):
            return False, f"sequence {i} differs"
    if not numpy.array_equal(x.document_indices, y.document_indices):
        return False, "document indices differ"
    return True, f"{len(x)} sequences identical"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--tokenizer-model", required=True, help="SentencePiece model")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout (optional)")
    p.add_argument("--megatron-pythonpath", default="",
                   help="extra PYTHONPATH for Megatron-LM's imports (e.g. a triton install)")
    p.add_argument("--output-dir", default=None, help="default: a temporary directory")
    args = p.parse_args(argv)

    size_mb = os.path.getsize(args.input) / 1e6
    with open(args.input, "rb") as f:
        docs = sum(1 for _ in f)
    out_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tok = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
           os.path.abspath(args.tokenizer_model), "--append-eod", "--json-keys", "text"]
    print(f"input {args.input}: {size_mb:.1f} MB, {docs:,} documents; outputs in {out_dir}",
          flush=True)
    rows, checks = [], []
    for w in args.workers:
        tools = [("ours", [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--overwrite"],
                  ROOT, env)]
        if args.megatron_lm:
            mlm = Path(args.megatron_lm).resolve()
            mlm_env = dict(env, PYTHONPATH=os.pathsep.join(
                x for x in (args.megatron_pythonpath, env.get("PYTHONPATH", "")) if x))
            tools.append(("Megatron-LM", [sys.executable, str(mlm / "tools/preprocess_data.py")],
                          mlm, mlm_env))
        prefixes = {}
        for name, cmd, cwd, tool_env in tools:
            prefix = out_dir / f"{name.replace('-', '').lower()}_w{w}"
            seconds = run_tool(name, cmd + ["--input", os.path.abspath(args.input), *tok,
                                            "--workers", str(w), "--output-prefix",
                                            str(prefix)], cwd, tool_env)
            doc_prefix = f"{prefix}_text_document"
            prefixes[name] = doc_prefix
            dataset = read_documents(doc_prefix)  # keep it alive while its memory map is read
            tokens = int(dataset.sequence_lengths.sum())
            del dataset
            rows.append((name, w, seconds, docs / seconds, tokens / seconds, size_mb / seconds))
            print(f"{name:12s} workers {w}: {seconds:7.1f} s, {tokens:,} tokens", flush=True)
        if len(prefixes) == 2:
            ok, what = same_documents(prefixes["ours"], prefixes["Megatron-LM"])
            checks.append(f"workers {w}: outputs {'match' if ok else 'DIFFER'} ({what})")
    print("\n| tool | workers | wall s | docs/s | tokens/s | MB/s | tokens/s per worker |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, w, s, d, t, mb in rows:
        print(f"| {name} | {w} | {s:.1f} | {d:,.0f} | {t:,.0f} | {mb:.2f} | {t / w:,.0f} |")
    for line in checks:
        print(line)


if __name__ == "__main__":
    main()
