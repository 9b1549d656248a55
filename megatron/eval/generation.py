"""Autoregressive generation: greedy, temperature, top-k and top-p sampling, with a KV cache.

    new_ids = generate(runner, prompt_ids, max_new_tokens=50, temperature=0.8, top_k=40,
                       top_p=0.95, seed=1, stop_ids={eod})

With the cache, the prompt is run once and then one token per step (the model's attention
appends to per-layer KVCache objects; see megatron/model/attention.py). Without it every step
re-runs the whole sequence. Once the sequence outgrows the model's positions, both use the
last `max_positions` tokens, re-encoded each step (a new cache is filled from them). The
driver samples; followers (the other TP and pipeline ranks) only see the model calls (runner.py).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) -> (B, V) with tokens outside the top-k / nucleus top-p set to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this one >= p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) fp32 -> (B,) token ids; temperature 0 is greedy (argmax)."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(runner, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: Optional[int] = None, use_cache: bool = True, stop_ids: Sequence[int] = (),
             stop_fn: Optional[Callable[[list], bool]] = None,
             vocab_limit: Optional[int] = None) -> list:
    """Generated ids per prompt: prompt_ids is one list or a (B, T) tensor of equal-length prompts.

    A row stops after a token in stop_ids (kept) or when stop_fn(its new ids) is true; the
    call stops when every row has. vocab_limit masks ids >= it (the padded vocabulary)."""
    tokens = torch.as_tensor(prompt_ids, dtype=torch.int64)
    tokens = tokens[None] if tokens.dim() == 1 else tokens  # (B, T)
    if tokens.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the EOD id)")
    B, max_pos = tokens.shape[0], runner.cfg.model.max_positions
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    new = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    cached = 0  # tokens already in the KV cache
    try:
        for _ in range(max_new_tokens):
            if use_cache and 0 < cached < max_pos and tokens.shape[1] <= max_pos:
                step = tokens[:, cached:]  # the new token(s)
                pos = torch.arange(cached, tokens.shape[1]).expand_as(step)
            else:  # first step, no cache, or past max_positions: the last max_pos tokens
                if use_cache:
                    runner.use_kv_cache(True)
                step = tokens[:, -max_pos:]
                pos = None
            logits = runner.logits(step, pos)[:, -1].cpu()  # (B, V)
            cached = min(tokens.shape[1], max_pos)
            if vocab_limit is not None:
                logits[:, vocab_limit:] = float("-inf")
            nxt = next_token(logits, temperature, top_k, top_p, gen)  # (B,)
            nxt = torch.where(done, tokens[:, -1], nxt)  # finished rows repeat (ignored)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            for b in range(B):
                if not done[b]:
                    new[b].append(int(nxt[b]))
                    done[b] = int(nxt[b]) in stop_ids or bool(stop_fn and stop_fn(new[b]))
            if bool(done.all()):
                break
    finally:
        if use_cache:
            runner.use_kv_cache(False)
    return new
