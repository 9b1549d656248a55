"""Perplexity and bits-per-byte of a checkpoint on a text/jsonl file or an indexed dataset.

    python tools/eval_perplexity.py --load ckpt --input valid.jsonl [--json-key text] [--stride 256]
    torchrun --nproc-per-node 2 tools/eval_perplexity.py --load ckpt --input data/x_text_document
    torchrun --nproc-per-node 2 tools/eval_perplexity.py --load ckpt --input valid.jsonl --pipeline-model-parallel-size 2

Documents are scored separately (EOD prepended), with sliding windows of the model's seq_length
advancing by --stride tokens (default: seq_length, disjoint windows). BPB counts the UTF-8
bytes of the texts; for an indexed dataset (--input PREFIX of PREFIX.bin/.idx) the bytes are
those of the detokenized documents. Under torchrun the model runs over all ranks: TP x PP =
world size (default TP = world size, PP = 1).
Prints (and with --results-path writes) a JSON line.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import os  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.eval.runner import (ModelRunner, add_parallel_flags, drive,  # noqa: E402
                                  init_eval_parallel)
from megatron.eval.text_perplexity import (indexed_documents, read_texts, text_perplexity,  # noqa: E402
                                           token_perplexity)
from megatron.eval.tokenizer import add_tokenizer_flags, tokenizer_from_args  # noqa: E402
from megatron.parallel.layout import destroy_parallel  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory")
    p.add_argument("--tag", default=None)
    p.add_argument("--input", required=True, help=".jsonl, text file, or indexed dataset prefix")
    p.add_argument("--json-key", default="text")
    p.add_argument("--stride", type=int, default=None, help="window advance (default seq_length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--results-path", default=None)
    add_tokenizer_flags(p)
    add_parallel_flags(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.input) and not os.path.isfile(args.input + ".idx"):
        raise SystemExit(f"--input {args.input}: no such file or indexed dataset (PREFIX.bin/.idx)")
    layout = init_eval_parallel(args.tensor_model_parallel_size,
                                args.pipeline_model_parallel_size)
    try:
        runner = ModelRunner.from_checkpoint(args.load, layout, args.tag)
        tok = tokenizer_from_args(runner.cfg, args)

        def work():
            if os.path.isfile(args.input + ".idx"):
                docs = indexed_documents(args.input, tok.eod, args.max_documents)
                nbytes = [len(tok.detokenize(d).encode("utf-8")) for d in docs]
                return token_perplexity(runner, docs, tok.eod, args.stride, args.batch_size, nbytes)
            texts = read_texts(args.input, args.json_key)[:args.max_documents]
            return text_perplexity(runner, tok, texts, args.stride, args.batch_size)
        stats = drive(runner, work)
        if stats is not None:
            out = dict(stats.to_dict(), load=args.load, input=args.input,
                       stride=args.stride or runner.max_length)
            print(json.dumps(out))
            if args.results_path:
                with open(args.results_path, "w") as f:
                    json.dump(out, f, indent=2)
    finally:
        destroy_parallel()


if __name__ == "__main__":
    main()
