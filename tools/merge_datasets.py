"""Concatenate megatron-core indexed datasets into one (Megatron's merge_datasets.py).

    python tools/merge_datasets.py --input data/shards --output-prefix data/all_text_document
    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \
        --output-prefix data/ab_text_document

A directory input contributes every PREFIX.idx/.bin pair in it, sorted by name; prefixes are
taken in the order given. All inputs must have the same token dtype. The output is written under
a temporary name and renamed at the end; an existing output is refused unless --overwrite.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.data.indexed_io import existing_outputs, merge_datasets  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--input", nargs="+", required=True,
                   help="directories of datasets and/or dataset prefixes (without .bin/.idx)")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p.parse_args(argv)


def find_prefixes(inputs) -> list:
    """Dataset prefixes named by `inputs` (directories expanded), checked to exist."""
    prefixes = []
    for item in inputs:
        item = item[:-4] if item.endswith((".bin", ".idx")) else item
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f[:-4]) for f in os.listdir(item)
                           if f.endswith(".idx") and ".tmp-" not in f)
            if not found:
                raise ValueError(f"--input {item}: the directory holds no .idx files")
            prefixes += found
        elif os.path.exists(item + ".idx"):
            prefixes.append(item)
        else:
            raise ValueError(f"--input {item}: neither a directory nor a dataset prefix "
                             f"({item}.idx does not exist)")
    return prefixes


def run(args) -> list:
    prefixes = find_prefixes(args.input)
    out = os.path.abspath(args.output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"--output-prefix {args.output_prefix} is also an input")
    existing = existing_outputs([args.output_prefix])
    if existing and not args.overwrite:
        raise ValueError(f"output files exist: {', '.join(existing)} (pass --overwrite to "
                         "replace them)")
    return merge_datasets(prefixes, args.output_prefix)


def main(argv=None) -> list:
    args = parse_args(argv)
    try:
        written = run(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"merged {len(args.input)} input(s) into {', '.join(written)}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
