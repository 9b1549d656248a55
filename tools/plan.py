"""Will a model fit a layout, and how fast should it go? Memory per GPU (weights, gradients,
optimizer states, activations) per pipeline stage, pipeline bubble, FLOPs and step time.

    python tools/plan.py --num-layers 70 --hidden-size 14336 --num-attention-heads 112 \
        --seq-length 2048 --pad-vocab-size-to 250880 --position-embedding-type alibi \
        --embed-layernorm --tensor-model-parallel-size 4 --pipeline-model-parallel-size 12 \
        --micro-batch-size 2 --global-batch-size 2048 --bf16 --zero-stage 0 \
        --checkpoint-activations --pp-partition-method 'type:transformer|embedding' \
        --world-size 384 --gpu A100-80GB
    python tools/plan.py --preset bloom-176b --suggest --world-size 384   # layouts that fit

Model, parallel and batch flags are pretrain_gpt.py's (docs/cli.md); the formulas are in
megatron/trainer/plan.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.cli import parse_config  # noqa: E402
from megatron.config.validate import ConfigError  # noqa: E402
from megatron.trainer.plan import GPUS, format_plan, layout_from_config, plan, suggest, \
    with_vocab  # noqa: E402

PRESETS = {  # model shapes of the examples/slurm recipes
    "gpt-1.3b": "--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048",
    "gpt-13b": "--num-layers 40 --hidden-size 5120 --num-attention-heads 40 --seq-length 2048",
    "gpt3-175b": "--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048",
    "bloom-176b": "--num-layers 70 --hidden-size 14336 --num-attention-heads 112 --seq-length "
                  "2048 --pad-vocab-size-to 250880 --position-embedding-type alibi "
                  "--embed-layernorm --bf16 --zero-stage 0 --checkpoint-activations "
                  "--pp-partition-method type:transformer|embedding",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--world-size", type=int, default=None,
                    help="GPUs (default: TP x PP, i.e. data-parallel size 1)")
    ap.add_argument("--gpu", default="H100-80GB", choices=sorted(GPUS))
    ap.add_argument("--mfu", type=float, default=0.45,
                    help="fraction of the GPU's peak bf16 FLOP/s reached while computing")
    ap.add_argument("--vocab-size", type=int, default=50257,
                    help="tokenizer vocabulary before padding (GPT-2: 50257)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a recipe's model shape")
    ap.add_argument("--suggest", action="store_true",
                    help="list the fastest layouts of --world-size GPUs that fit")
    ap.add_argument("--top", type=int, default=10, help="layouts to list with --suggest")
    ns, rest = ap.parse_known_args(argv)
    flags = (PRESETS[ns.preset].split() if ns.preset else []) + rest
    if "--train-iters" not in flags and "--train-samples" not in flags:
        flags += ["--train-iters", "1"]
    cfg = parse_config(flags)
    par = cfg.parallel
    world = ns.world_size or par.tensor_model_parallel_size * par.pipeline_model_parallel_size
    m = with_vocab(cfg.model, ns.vocab_size, par.tensor_model_parallel_size)
    try:
        if ns.suggest:
            gbs = cfg.training.global_batch_size
            if not gbs:
                sys.exit("plan.py: --suggest needs --global-batch-size")
            found = suggest(m, world, gbs, ns.gpu, ns.mfu, precision=cfg.training.precision,
                            top=ns.top)
            if not found:
                print(f"no layout of {world} {ns.gpu} GPUs fits")
                return 1
            for i, p in enumerate(found):
                print(f"--- option {i + 1}\n{format_plan(p)}")
            return 0
        print(format_plan(plan(m, layout_from_config(cfg, world), ns.gpu, ns.mfu)))
    except (ConfigError, ValueError) as e:
        sys.exit(f"plan.py: error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
