"""Log-probabilities of token spans, in windows of at most the model's length, batched.

A window is (context, targets): the model reads (context + targets)[:-1] and the log-probs of
`targets` are read off its last len(targets) positions. `sliding_windows` cuts a long sequence
into such windows; `score_windows` runs them in length-sorted, right-padded batches (padding
after a sequence does not change a causal model's earlier positions).
"""
from __future__ import annotations

from typing import Sequence

import torch


def sliding_windows(tokens: Sequence[int], first_target: int, max_len: int,
                    stride: int | None = None) -> list:
    """Windows scoring tokens[first_target:], each token conditioned on up to max_len earlier ones.

    If the targets fit in one window it is the last max_len + 1 tokens. Otherwise the first
    window is tokens[:max_len + 1] (or ends first_target + stride) and each next one advances
    by `stride` (default max_len) tokens, scoring only its new ones with max_len - stride tokens
    of extra context. stride = max_len is lm-eval's rolling windows (get_rolling_token_windows
    with context_len=1 + make_disjoint_window); a smaller stride gives every token more context.
    """
    tokens = list(tokens)
    n, stride = len(tokens), stride or max_len
    if not 1 <= first_target <= n:
        raise ValueError(f"first_target {first_target} must be in [1, {n}] (a token to condition on)")
    if not 1 <= stride <= max_len:
        raise ValueError(f"--stride {stride} must be in [1, max length {max_len}]")
    if first_target == n:
        return []
    end = n if n - first_target <= max_len else max(max_len + 1, first_target + stride)
    start, windows = first_target, []
    while True:
        windows.append((tokens[max(0, end - 1 - max_len):start], tokens[start:end]))
        if end >= n:
            return windows
        start, end = end, min(n, end + stride)


def score_batch(runner, windows: Sequence[tuple], pad_id: int = 0) -> list:
    """[(context, targets)] -> [(sum log p(targets), all targets greedy)] in one forward."""
    inputs = [list(c) + list(t[:-1]) for c, t in windows]
    longest = max(len(x) for x in inputs)
    if longest > runner.max_length:
        raise ValueError(f"window of {longest} tokens exceeds the model's {runner.max_length}")
    batch = torch.full((len(inputs), longest), pad_id, dtype=torch.int64)
    for i, x in enumerate(inputs):
        batch[i, :len(x)] = torch.tensor(x, dtype=torch.int64)
    logprobs = torch.log_softmax(runner.logits(batch), dim=-1).cpu()  # (B, T, V)
    out = []
    for i, ((_, targets), x) in enumerate(zip(windows, inputs)):
        lp = logprobs[i, len(x) - len(targets):len(x)]  # (n_targets, V)
        tgt = torch.tensor(targets, dtype=torch.int64)
        out.append((lp.gather(-1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())))
    return out


def score_windows(runner, windows: Sequence[tuple], batch_size: int, pad_id: int = 0) -> list:
    """score_batch over any number of windows, longest first, results in the input order."""
    order = sorted(range(len(windows)), key=lambda i: -(len(windows[i][0]) + len(windows[i][1])))
    results = [None] * len(windows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        for i, r in zip(idx, score_batch(runner, [windows[i] for i in idx], pad_id)):
            results[i] = r
    return results
