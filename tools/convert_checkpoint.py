"""Re-shard a checkpoint's model weights to another tensor-parallel size (any TP/PP in, PP 1 out).

    python tools/convert_checkpoint.py --load ckpt --save ckpt_tp1 --target-tp 1 [--tag global_step100]

Reads `--load` (its `latest` tag unless --tag), merges the TP shards (and pipeline layer files)
into one full state dict, splits it for --target-tp and writes `--save/<out tag>/
mp_rank_XX_model_states.pt` ({"module": shard}), `config.json` (TP updated) and `latest`.
Optimizer states are not converted: evaluate/export the result, or fine-tune from it with
--no-load-optim.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.eval import checkpoint_loader as ckl  # noqa: E402
from megatron.eval.runner import init_eval_parallel  # noqa: E402
from megatron.parallel.layout import destroy_parallel  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory to read")
    p.add_argument("--tag", default=None, help="tag to read (default: the one in --load/latest)")
    p.add_argument("--save", required=True, help="directory to write")
    p.add_argument("--target-tp", type=int, required=True, help="tensor-parallel size to write")
    p.add_argument("--save-tag", default=None, help="tag to write (default: the tag read)")
    return p.parse_args(argv)


def convert(load, save, target_tp, tag=None, save_tag=None) -> str:
    """Returns the written tag directory."""
    if target_tp < 1:
        raise ValueError(f"--target-tp {target_tp} must be >= 1")
    tag = ckl.resolve_tag(load, tag)
    cfg, full = ckl.load_full_state_dict(load, tag)
    m = cfg.model
    if m.num_attention_heads % target_tp or m.vocab_size % target_tp or m.ffn_size % target_tp:
        raise ValueError(f"--target-tp {target_tp} does not divide the model: heads "
                         f"{m.num_attention_heads}, padded vocabulary {m.vocab_size}, ffn {m.ffn_size}")
    shards = ckl.split_state_dict(full, ckl.partition_specs(m), target_tp)
    return ckl.save_model_checkpoint(save, cfg, shards, save_tag or tag)


def main(argv=None):
    args = parse_args(argv)
    init_eval_parallel()  # one process, TP = 1
    try:
        out = convert(args.load, args.save, args.target_tp, args.tag, args.save_tag)
    finally:
        destroy_parallel()
    print(f"wrote TP{args.target_tp} model weights to {out}")


if __name__ == "__main__":
    main()
