"""Write a small real-text corpus from the Python standard library's docstrings, as jsonl.

Every machine with Python has it, so the quickstart needs no download. One document per module:
its docstring followed by the docstrings of its classes and functions, in source order.

    python tools/build_stdlib_corpus.py --output data/stdlib.jsonl --max-mb 6 \
        --heldout-output data/heldout.jsonl --heldout-every 20

With --heldout-output, every Nth module goes there instead (text the model never trains on,
for evaluation).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
             "lib2to3", "ensurepip", "turtledemo"}


def module_files(stdlib: Path):
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(root) / name


def module_document(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    docs = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > 40 and doc not in docs:
                docs.append(doc)
    return "\n\n".join(docs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="jsonl file to write ({'text': ...} lines).")
    p.add_argument("--max-mb", type=float, default=6.0, help="Stop after this many MB of text.")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                   help="Standard library directory (default: this interpreter's).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output.")
    p.add_argument("--heldout-output", default=None,
                   help="Write every --heldout-every-th module here instead of --output.")
    p.add_argument("--heldout-every", type=int, default=20, help="See --heldout-output.")
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.exists() and not args.overwrite and (
            args.heldout_output is None or Path(args.heldout_output).exists()):
        print(f"{out} exists; keeping it (pass --overwrite to rebuild)", file=sys.stderr)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, n_docs, n_bytes, n_held = time.time(), 0, 0, 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    held_path = Path(args.heldout_output) if args.heldout_output else None
    held_tmp = held_path.with_suffix(held_path.suffix + ".tmp") if held_path else None
    with tmp.open("w", encoding="utf-8") as f, \
            (held_tmp.open("w", encoding="utf-8") if held_tmp else open(os.devnull, "w")) as h:
        for i, path in enumerate(module_files(Path(args.stdlib))):
            text = module_document(path)
            if not text:
                continue
            line = json.dumps({"text": text, "source": str(path.relative_to(args.stdlib))})
            if held_path and i % args.heldout_every == args.heldout_every - 1:
                h.write(line + "\n")
                n_held += 1
                continue
            f.write(line + "\n")
            n_docs += 1
            n_bytes += len(text.encode("utf-8"))
            if n_bytes >= args.max_mb * 1e6:
                break
    tmp.replace(out)
    if held_tmp:
        held_tmp.replace(held_path)
    print(f"wrote {out}: {n_docs} documents, {n_bytes / 1e6:.1f} MB of docstrings from "
          f"{args.stdlib} in {time.time() - t0:.1f}s"
          + (f"; {n_held} held-out documents in {held_path}" if held_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
