"""Generate text from a checkpoint: greedy, or sampling with temperature / top-k / top-p.

    python tools/generate.py --load ckpt --prompt "def main(" --max-new-tokens 50
    python tools/generate.py --load ckpt --prompt-file prompts.txt --temperature 0.8 --top-p 0.9 --seed 1
    torchrun --nproc-per-node 2 tools/generate.py --load ckpt --prompt "..."      # tensor-parallel
    torchrun --nproc-per-node 2 tools/generate.py --load ckpt --prompt "..." --pipeline-model-parallel-size 2

--temperature 0 (default) is greedy. Decoding uses a KV cache (--no-kv-cache re-runs the whole
sequence each step). Generation stops at EOD or after --max-new-tokens. A prompt file holds one
prompt per line (or a .jsonl with --json-key). Prints one JSON object per prompt
({"prompt", "completion", "tokens"}) with --json, else the completions.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402  (first: quiets megatron-core)
from megatron.eval.generation import generate  # noqa: E402
from megatron.eval.runner import (ModelRunner, add_parallel_flags, drive,  # noqa: E402
                                  init_eval_parallel)
from megatron.eval.tokenizer import add_tokenizer_flags, tokenizer_from_args  # noqa: E402
from megatron.parallel.layout import destroy_parallel  # noqa: E402


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory")
    p.add_argument("--tag", default=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-file")
    p.add_argument("--json-key", default="text", help="key of the prompts in a .jsonl --prompt-file")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-kv-cache", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    add_tokenizer_flags(p)
    add_parallel_flags(p)
    args = p.parse_args(argv)
    if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        p.error(f"need --temperature >= 0 (got {args.temperature}), --top-k >= 0 (got "
                f"{args.top_k}), 0 < --top-p <= 1 (got {args.top_p})")
    return args


def read_prompts(args) -> list:
    if args.prompt is not None:
        return [args.prompt]
    if not Path(args.prompt_file).is_file():
        raise SystemExit(f"--prompt-file {args.prompt_file}: no such file")
    lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
    if args.prompt_file.endswith(".jsonl"):
        return [json.loads(line)[args.json_key] for line in lines if line.strip()]
    return [line for line in lines if line.strip()]


def main(argv=None):
    args = parse_args(argv)
    prompts = read_prompts(args)
    layout = init_eval_parallel(args.tensor_model_parallel_size,
                                args.pipeline_model_parallel_size)
    try:
        runner = ModelRunner.from_checkpoint(args.load, layout, args.tag)
        tok = tokenizer_from_args(runner.cfg, args)

        def work():
            out = []
            for i, prompt in enumerate(prompts):
                ids = tok.tokenize(prompt) or [tok.eod]
                new = generate(runner, ids, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p,
                               seed=None if args.seed is None else args.seed + i,
                               use_cache=not args.no_kv_cache, stop_ids=[tok.eod],
                               vocab_limit=tok.vocab_size)[0]
                text = tok.detokenize([t for t in new if t != tok.eod])
                out.append({"prompt": prompt, "completion": text, "tokens": new})
            return out
        for r in drive(runner, work) or []:
            print(json.dumps(r) if args.json else r["prompt"] + r["completion"], flush=True)
    finally:
        destroy_parallel()


if __name__ == "__main__":
    main()
