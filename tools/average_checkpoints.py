"""Average the model weights of the last k checkpoints (any TP/PP layout) into a new checkpoint.

    python tools/average_checkpoints.py --load ckpt --last 5 --output ckpt-avg
    python pretrain_gpt.py ... --load ckpt-avg --no-load-optim   # or evaluate it

Averaging happens file by file: every model-state file of the newest checkpoint (one per TP rank,
or one per pipeline layer and TP rank) is averaged with the file of the same name in the older
checkpoints, so shards are averaged with their own kind and the layout is kept. Weights are
averaged in fp32 and stored in their original dtype. Optimizer states are not written: resume
from the result with --no-load-optim.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

MODEL_FILE = re.compile(r"(mp_rank_\d+_model_states|layer_\d+-model_\d+-model_states)\.pt$")


def checkpoint_tags(load_dir: Path) -> list[str]:
    """Complete checkpoints (global_stepN folders with a config.json), oldest first."""
    tags = []
    for d in load_dir.iterdir():
        m = re.fullmatch(r"global_step(\d+)", d.name)
        if m and d.is_dir() and (d / "config.json").is_file():
            tags.append((int(m.group(1)), d.name))
    return [t for _, t in sorted(tags)]


def _weights(obj: dict) -> dict:
    return obj["module"] if "module" in obj else obj


def average_file(paths: list[Path]) -> dict:
    """The newest file's contents with its weights replaced by the mean over all paths."""
    newest = torch.load(paths[-1], map_location="cpu", weights_only=False)
    target = _weights(newest)
    sums = {k: v.double().clone() for k, v in target.items() if torch.is_tensor(v) and
            v.is_floating_point()}
    for path in paths[:-1]:
        other = _weights(torch.load(path, map_location="cpu", weights_only=False))
        missing = sorted(set(sums) - set(other))
        if missing:
            raise ValueError(f"{path} lacks {missing[:3]}: checkpoints of different models?")
        for k in sums:
            if other[k].shape != sums[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(other[k].shape)}, the newest "
                                 f"checkpoint {tuple(sums[k].shape)}: different layouts?")
            sums[k] += other[k].double()
    for k, total in sums.items():
        target[k] = (total / len(paths)).to(target[k].dtype)
    return newest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, type=Path, help="Directory of the checkpoints.")
    p.add_argument("--last", type=int, default=None, help="Average the newest K checkpoints.")
    p.add_argument("--tags", nargs="+", default=None, help="Or name the tags to average.")
    p.add_argument("--output", required=True, type=Path, help="New checkpoint directory.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing --output.")
    args = p.parse_args(argv)
    if not args.load.is_dir():
        p.error(f"--load {args.load}: no such directory")
    tags = args.tags or checkpoint_tags(args.load)[-(args.last or 0):]
    if args.tags is None and not args.last:
        p.error("give --last K or --tags")
    if len(tags) < 1 or (args.last and len(tags) < args.last):
        p.error(f"--load {args.load}: found {len(tags)} complete checkpoints "
                f"({', '.join(tags) or 'none'}), need {args.last}")
    for t in tags:
        if not (args.load / t).is_dir():
            p.error(f"--tags: {args.load / t} does not exist")
    if args.output.exists() and not args.overwrite:
        p.error(f"--output {args.output} exists (pass --overwrite to replace it)")
    newest = args.load / tags[-1]
    files = sorted(f.name for f in newest.iterdir() if MODEL_FILE.search(f.name))
    if not files:
        p.error(f"{newest}: no model-state files (mp_rank_*_model_states.pt)")
    tmp = args.output.with_name(args.output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / tags[-1]).mkdir(parents=True)
    for name in files:
        averaged = average_file([args.load / t / name for t in tags])
        torch.save(averaged, tmp / tags[-1] / name)
    cfg = json.loads((newest / "config.json").read_text())
    cfg.setdefault("averaged_from", tags)
    (tmp / tags[-1] / "config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / "latest").write_text(tags[-1])
    if args.output.exists():
        shutil.rmtree(args.output)
    os.replace(tmp, args.output)
    print(f"averaged {len(tags)} checkpoints ({', '.join(tags)}) of {args.load}: "
          f"{len(files)} model files -> {args.output}/{tags[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
