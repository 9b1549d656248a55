"""Zero-/few-shot evaluation of a checkpoint with lm-evaluation-harness (model "megatron-gpt").

    python tasks/eval_harness/evaluate.py --load ckpt --tasks lambada_openai,piqa --num-fewshot 0 \
        --batch-size 8 [--results-path out.json] [--include-path DIR] [--limit N]
    torchrun --nproc-per-node 2 tasks/eval_harness/evaluate.py --load ckpt ...   # tensor-parallel
    torchrun --nproc-per-node 4 tasks/eval_harness/evaluate.py --load ckpt ... --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

Runs lm_eval.simple_evaluate on rank 0 with megatron.eval.harness.MegatronGPTLM; under torchrun
the other ranks hold their TP shard of their pipeline stage and follow rank 0's model calls
(TP x PP = world size; with no flags TP = world size, PP = 1). Tasks are looked up by
lm-eval's TaskManager (plus --include-path for local task YAMLs). Datasets must already be in
the HF cache or local files: set HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 to forbid downloads.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import json  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.eval.runner import (ModelRunner, add_parallel_flags, drive,  # noqa: E402
                                  init_eval_parallel)
from megatron.eval.tokenizer import add_tokenizer_flags, tokenizer_from_args  # noqa: E402
from megatron.parallel.layout import destroy_parallel  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory")
    p.add_argument("--tag", default=None)
    p.add_argument("--tasks", required=True, help="comma-separated task (or group) names")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-gen-toks", type=int, default=256)
    p.add_argument("--limit", type=float, default=None, help="documents per task (debugging)")
    p.add_argument("--include-path", default=None, help="directory of extra task YAMLs")
    p.add_argument("--results-path", default=None, help="write the results JSON here")
    p.add_argument("--seed", type=int, default=1234)
    add_tokenizer_flags(p)
    add_parallel_flags(p)
    return p.parse_args(argv)


def task_list(names: str, task_manager) -> list:
    tasks = [t.strip() for t in names.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        raise SystemExit(f"--tasks: unknown task(s) {unknown}; see `lm_eval --tasks list`"
                         f" (local YAMLs: --include-path)")
    return tasks


def evaluate(runner, tokenizer, args) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from megatron.eval.harness import MegatronGPTLM
    tm = TaskManager(include_path=args.include_path)
    lm = MegatronGPTLM(runner, tokenizer, batch_size=args.batch_size, max_gen_toks=args.max_gen_toks)
    return lm_eval.simple_evaluate(model=lm, tasks=task_list(args.tasks, tm),
                                   num_fewshot=args.num_fewshot, limit=args.limit, task_manager=tm,
                                   log_samples=False, random_seed=args.seed,
                                   numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                   fewshot_random_seed=args.seed)


def main(argv=None):
    args = parse_args(argv)
    layout = init_eval_parallel(args.tensor_model_parallel_size,
                                args.pipeline_model_parallel_size)
    try:
        runner = ModelRunner.from_checkpoint(args.load, layout, args.tag)
        tok = tokenizer_from_args(runner.cfg, args)
        out = drive(runner, lambda: evaluate(runner, tok, args))
        if out is not None:
            from lm_eval.utils import make_table
            print(make_table(out))
            if args.results_path:
                with open(args.results_path, "w") as f:
                    json.dump({"results": out["results"], "configs": out.get("configs", {}),
                               "n-shot": out.get("n-shot", {}), "load": args.load}, f, indent=2,
                              default=str)
    finally:
        destroy_parallel()


if __name__ == "__main__":
    main()
