"""lm-evaluation-harness (0.4.x) model "megatron-gpt": our checkpoints behind lm-eval's LM API.

    lm = MegatronGPTLM(runner, tokenizer, batch_size=8)       # runner: runner.ModelRunner
    lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])
    # or by name: simple_evaluate(model="megatron-gpt", model_args="load=CKPT,batch_size=8")
    # under torchrun --nproc-per-node 4: model_args="load=CKPT,tensor_model_parallel_size=2,
    #                                                pipeline_model_parallel_size=2"

loglikelihood: (context, continuation) -> windows (scoring.sliding_windows: the last seq_length
+ 1 tokens when the continuation fits, rolling windows when it is longer than the context),
length-sorted and batched with lm-eval's Collator. loglikelihood_rolling: lm-eval's rolling
windows (prefix EOD, context_len=1). generate_until: one request at a time with the KV cache,
greedy unless do_sample, stopping at the `until` strings or EOD. Under TP x PP only the driver
(global rank 0) calls these; the other ranks run runner.serve(). Built by name (model_args), the
LM makes the layout itself (TP x PP = world size; TP defaults to world size / PP): the followers
never return from the constructor: they serve the driver's calls and exit (SystemExit(0)) when
the driver's process ends (an atexit hook stops them).
"""
from __future__ import annotations

from typing import Optional

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from megatron.eval.generation import generate
from megatron.eval.scoring import score_batch, sliding_windows


@register_model("megatron-gpt")
class MegatronGPTLM(TemplateLM):
    def __init__(self, runner=None, tokenizer=None, batch_size: int = 8, max_gen_toks: int = 256,
                 load: Optional[str] = None, tag: Optional[str] = None,
                 tokenizer_model: Optional[str] = None,
                 tensor_model_parallel_size: Optional[int] = None,
                 pipeline_model_parallel_size: int = 1, **_ignored):
        super().__init__()
        if runner is None:  # built by name from model_args
            if not load:
                raise ValueError("model megatron-gpt needs model_args load=<checkpoint dir>")
            runner, tokenizer = _runner_from_args(load, tag, tokenizer_model,
                                                  tensor_model_parallel_size,
                                                  pipeline_model_parallel_size)
        self.runner, self.tok = runner, tokenizer
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod

    @property
    def max_length(self) -> int:
        return self.runner.max_length

    @property
    def tokenizer_name(self) -> str:
        return repr(self.tok)

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list:
        return list(self.tok.tokenize(string))

    def tok_decode(self, tokens) -> str:
        return self.tok.detokenize(tokens)

    def _windows(self, context_enc: list, continuation_enc: list) -> list:
        return sliding_windows(context_enc + continuation_enc, len(context_enc), self.max_length)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list:
        """[((context, continuation), context_enc, continuation_enc)] -> [(logprob, is_greedy)]."""
        jobs = []  # (request index, window), a long continuation gives several windows
        for i, (_, ctx, cont) in enumerate(requests):
            jobs += [(i, w) for w in self._windows(list(ctx), list(cont))]
        collator = Collator(jobs, sort_fn=lambda j: (-len(j[1][0]) - len(j[1][1]), tuple(j[1][0])))
        scored = []
        bar = tqdm(total=len(jobs), disable=disable_tqdm, desc="megatron-gpt loglikelihood")
        for batch in collator.get_batched(n=self.batch_size):
            scored += score_batch(self.runner, [w for _, w in batch], self.tok.eod)
            bar.update(len(batch))
        bar.close()
        totals = [[0.0, True] for _ in requests]
        for (i, _), (lp, greedy) in zip(jobs, collator.get_original(scored)):
            totals[i][0] += lp
            totals[i][1] = totals[i][1] and greedy
        out = [(lp, greedy) for lp, greedy in totals]
        for (key, _, _), r in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, r)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list:
        """Sum of log p(token | up to max_length earlier tokens) over each whole text."""
        reqs = [((None, None), [self.prefix_token_id], self.tok_encode(string))
                for (string,) in (r.args for r in requests)]
        out = [lp for lp, _ in self._loglikelihood_tokens(reqs, disable_tqdm)]
        for r, lp in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, lp)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list:
        eos = self.tok_decode([self.eot_token_id])
        results = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm,
                                        desc="megatron-gpt generate_until"):
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos or None)
            max_new = kw.pop("max_gen_toks")
            ctx = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.tok.eod]
            sample = kw.get("do_sample", False)

            def stop_fn(new_ids):
                text = self.tok_decode(new_ids)
                return any(u and u in text for u in until)
            new_ids = generate(self.runner, ctx, max_new,
                               temperature=float(kw.get("temperature", 0.0)) if sample else 0.0,
                               top_k=int(kw.get("top_k", 0) or 0),
                               top_p=float(kw.get("top_p", 1.0) or 1.0),
                               seed=kw.get("seed"), stop_ids=[self.tok.eod], stop_fn=stop_fn,
                               vocab_limit=self.tok.vocab_size)[0]
            if new_ids and new_ids[-1] == self.tok.eod:
                new_ids = new_ids[:-1]
            text = self.tok_decode(new_ids)
            for u in until:
                if u:
                    text = text.split(u)[0]
            results.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results


def _runner_from_args(load, tag, tokenizer_model, tp, pp) -> tuple:
    """(driver's runner, tokenizer) on global rank 0; the other ranks serve, then exit."""
    import atexit

    from megatron.eval.runner import ModelRunner, init_eval_parallel
    from megatron.eval.tokenizer import tokenizer_for
    layout = init_eval_parallel(None if tp is None else int(tp), int(pp))
    runner = ModelRunner.from_checkpoint(load, layout, tag)
    if not runner.is_driver:
        runner.serve()
        raise SystemExit(0)
    if runner.group is not None:
        atexit.register(_stop_if_connected, runner)
    return runner, tokenizer_for(runner.cfg, tokenizer_model=tokenizer_model)


def _stop_if_connected(runner) -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        runner.stop()
