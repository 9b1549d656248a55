"""Export a checkpoint (any TP/PP) to an HF transformers directory, or import one.

    python tools/convert_hf.py export --load ckpt --out hf_model [--tag T] [--hf-vocab-size N] [--bf16]
    python tools/convert_hf.py import --hf-dir hf_model --save ckpt [--target-tp 2] [--seq-length 2048]

export writes config.json, model.safetensors and tokenizer files (see megatron/eval/hf_io.py for
what each tokenizer type becomes); load it with transformers' AutoModelForCausalLM and
AutoTokenizer. The family follows the architecture (GPT-2, BLOOM, GPT-NeoX, Llama). import
writes model weights only (TP = --target-tp, tag "release"), with the HF directory recorded as
the tokenizer (HuggingFaceTokenizer) when it has tokenizer files.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from megatron.eval import checkpoint_loader as ckl  # noqa: E402
from megatron.eval.hf_io import export_hf, import_hf  # noqa: E402
from megatron.eval.tokenizer import add_tokenizer_flags, tokenizer_from_args  # noqa: E402
from megatron.eval.runner import init_eval_parallel  # noqa: E402
from megatron.parallel.layout import destroy_parallel  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="our checkpoint -> HF directory")
    e.add_argument("--load", required=True)
    e.add_argument("--tag", default=None)
    e.add_argument("--out", required=True, help="HF output directory")
    e.add_argument("--hf-vocab-size", type=int, default=None,
                   help="cut the padded vocabulary to this many rows (default: keep it)")
    e.add_argument("--bf16", action="store_true", help="save bf16 weights (default fp32)")
    e.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    add_tokenizer_flags(e)
    i = sub.add_parser("import", help="HF directory -> our checkpoint")
    i.add_argument("--hf-dir", required=True)
    i.add_argument("--save", required=True)
    i.add_argument("--target-tp", type=int, default=1)
    i.add_argument("--seq-length", type=int, default=None,
                   help="training/eval length (default: the HF max_position_embeddings)")
    i.add_argument("--tag", default="release")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    init_eval_parallel()  # one process, TP = 1
    try:
        if args.command == "export":
            tok = None
            if not args.no_tokenizer:
                cfg = ckl.load_config(args.load, ckl.resolve_tag(args.load, args.tag))
                tok = tokenizer_from_args(cfg, args)
            family = export_hf(args.load, args.out, args.tag, tok, args.hf_vocab_size,
                               torch.bfloat16 if args.bf16 else torch.float32)
            print(f"wrote HF {family} model to {args.out}")
        else:
            out = import_hf(args.hf_dir, args.save, args.target_tp, args.seq_length, args.tag)
            print(f"wrote TP{args.target_tp} checkpoint {out}")
    finally:
        destroy_parallel()


if __name__ == "__main__":
    main()
