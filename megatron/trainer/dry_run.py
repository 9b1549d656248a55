"""`pretrain_gpt.py --dry-run`: config, start-up checks, topology, each pipeline stage's
partition and the memory/throughput plan, without starting torch.distributed or building weights.

The partition is computed analytically with DeepSpeed's own partitioners over the pipeline
module's spec list (megatron/trainer/plan.py), not by building the model on the meta device.
"""
from __future__ import annotations

import os

from megatron.config.schema import Config
from megatron.config import validate as v
from megatron.trainer.plan import format_plan, layout_from_config, plan, with_vocab


def dry_run(cfg: Config, world_size: int | None = None, vocab: int = 50257) -> int:
    """Print the plan; returns 0 if a real run would pass start-up checks, else 1."""
    t, par = cfg.training, cfg.parallel
    world = (t.dry_run_world_size or world_size or
             par.tensor_model_parallel_size * par.pipeline_model_parallel_size)
    problems = []
    for (group, name), (off, flag, where) in v.NOT_IMPLEMENTED_YET.items():
        if getattr(getattr(cfg, group), name) != off:
            problems.append(f"{flag} is not implemented yet ({where})")
    for check in (v.check_model_shape, v.check_model, lambda c: v.check_batch(c, world),
                  lambda c: v.check_deepspeed_config(c, world)):
        try:
            check(cfg)
        except v.ConfigError as e:
            problems.append(str(e))
    if problems:  # shape/batch errors make the plan meaningless
        print("dry run: a real run would stop at start-up:\n  " + "\n  ".join(problems))
        if any("not implemented" not in p for p in problems):
            return 1
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    layout = layout_from_config(cfg, world)
    topo = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    print(f"dry run: {world} ranks, topology {topo.get_axis_names()} {topo.dims}; rank 0 is "
          f"{topo.get_coord(0)}, rank {world - 1} is {topo.get_coord(world - 1)}")
    m = with_vocab(cfg.model, vocab, layout.tp)
    print(format_plan(plan(m, layout, t.dry_run_gpu)))
    return 1 if problems else 0


def vocab_for_dry_run(cfg: Config) -> int:
    """Tokenizer size without loading weights: the SentencePiece/HF file if present, else GPT-2's."""
    d = cfg.data
    try:
        if d.tokenizer_type or d.mock_data:
            from megatron.data.tokenizers import build_tokenizer
            paths = [p for p in (d.tokenizer_model, d.tokenizer_name_or_path, d.vocab_file) if p]
            if d.mock_data or all(os.path.exists(p) for p in paths):
                return build_tokenizer(d.tokenizer_type or "ByteLevelTokenizer",
                                       tokenizer_model=d.tokenizer_model,
                                       tokenizer_name_or_path=d.tokenizer_name_or_path,
                                       vocab_file=d.vocab_file, merge_file=d.merge_file).vocab_size
    except (ValueError, OSError):
        pass
    return 50257
