"""Turn a checkpoint into a layout-independent one that resumes at any TP / PP / DP size.

    torchrun --nproc-per-node 8 tools/checkpoint_to_universal.py --load ckpt --save ckpt_uni
    torchrun --nproc-per-node 4 pretrain_gpt.py <flags, any layout> --universal-checkpoint \
        --load ckpt_uni --save ckpt_new

Run it with as many processes as the checkpoint was saved from (TP x PP x DP of its
config.json; under srun/torchrun across nodes for large runs): every rank loads its part
through DeepSpeed, gathers each parameter's fp32 master weight and Adam moments, and the result
is written per model block (see megatron/trainer/universal.py) with the progress, Adam step
count, LR schedule and config. The input checkpoint is not modified.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402
import shutil  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron.config.validate import global_batch_size  # noqa: E402
from megatron.eval import checkpoint_loader as ckl  # noqa: E402
from megatron.parallel.launch import resolve_launch_env  # noqa: E402
from megatron.parallel.layout import destroy_parallel, initialize_parallel  # noqa: E402
from megatron.trainer import universal  # noqa: E402
from megatron.trainer.build_engine import build_engine  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory (pretrain_gpt.py --save)")
    p.add_argument("--tag", default=None, help="tag to convert (default: --load/latest)")
    p.add_argument("--save", required=True, help="directory for the universal checkpoint")
    return p.parse_args(argv)


def saved_dp(load_dir: str, tag: str) -> int:
    path = os.path.join(load_dir, tag, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--load {load_dir}: {path} is missing")
    return int(torch.load(path, map_location="cpu", weights_only=False).get("dp_world_size", 1))


def main(argv=None) -> str:
    args = parse_args(argv)
    tag = ckl.resolve_tag(args.load, args.tag)
    cfg = ckl.load_config(args.load, tag)
    launch = resolve_launch_env()
    par = cfg.parallel
    want = par.tensor_model_parallel_size * par.pipeline_model_parallel_size * \
        saved_dp(args.load, tag)
    if launch.world_size != want:
        sys.exit(f"checkpoint_to_universal.py: error: --load {args.load} (tag {tag}) was saved "
                 f"by {want} ranks (TP {par.tensor_model_parallel_size} x PP "
                 f"{par.pipeline_model_parallel_size} x DP {want // (par.tensor_model_parallel_size * par.pipeline_model_parallel_size)}); "
                 f"run this with {want} processes, not {launch.world_size}")
    layout = initialize_parallel(par, launch)
    torch.manual_seed(cfg.training.seed)
    engine = build_engine(cfg, layout, global_batch_size(cfg, layout.world_size))
    client = engine.load(args.load, tag, load_optimizer=True, load_rng=False)
    out = os.path.join(args.save, tag)
    tmp = out + ".tmp"
    if layout.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    universal.write_rank_states(engine, cfg, layout, tmp)
    dist.barrier()
    universal.merge_blocks(tmp, cfg.model, layout.rank, layout.world_size)
    step = universal.adam_step(engine.optimizer)
    dist.barrier()
    if layout.rank == 0:
        universal.write_meta(tmp, client, step)
        shutil.rmtree(os.path.join(tmp, "shards"))
        shutil.copy(os.path.join(args.load, tag, "config.json"), os.path.join(tmp, "config.json"))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        with open(os.path.join(args.save, "latest"), "w") as f:
            f.write(tag)
        blocks = len(os.listdir(os.path.join(out, "universal"))) - 1
        print(f"wrote {out}: {blocks} blocks, iteration {client['iteration']}, Adam step {step}; "
              f"resume at any layout with --universal-checkpoint --load {args.save}", flush=True)
    dist.barrier()
    return out


if __name__ == "__main__":
    try:
        main()
    finally:
        destroy_parallel()
