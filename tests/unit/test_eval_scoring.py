"""Harness adapter, windows and perplexity against the model's own log-probs (random TP=1 model).

By hand = one plain forward of GPTModel per window, log_softmax, gather the target ids.
"""
import math
import types

import pytest
import torch

from megatron.config.schema import Config, ModelConfig

T = 16  # seq_length: texts below are longer, so windows matter


@pytest.fixture(scope="module")
def runner(tp1_layout):
    from megatron.eval.runner import ModelRunner
    from megatron.model.gpt import GPTModel
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=T,
                                   vocab_size=384, hidden_dropout=0.0, attention_dropout=0.0,
                                   init_method_std=0.3))
    return ModelRunner(GPTModel(cfg.model).eval(), cfg, tp1_layout)


@pytest.fixture(scope="module")
def tok():
    from megatron.data.tokenizers import ByteLevelTokenizer
    return ByteLevelTokenizer()


def by_hand(runner, inputs, targets):
    """sum log p(targets | inputs) reading the last len(targets) positions of one forward."""
    with torch.no_grad():
        lp = torch.log_softmax(runner.model(torch.tensor([inputs])).float(), -1)[0]
    tail = lp[len(inputs) - len(targets):]
    return tail.gather(-1, torch.tensor(targets)[:, None]).sum().item()


def request(*args):
    return types.SimpleNamespace(args=args)


def test_sliding_windows_equal_lm_eval_rolling_windows_and_cover_each_target_once():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    from megatron.eval.scoring import sliding_windows
    toks = list(range(100, 153))
    for n in (1, 5, T, T + 1, 53):
        ours = sliding_windows([7] + toks[:n], 1, T)
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(toks[:n], 7, T, 1)]
        assert ours == theirs
    for stride in (1, 4, T):
        seq = list(range(60))
        wins = sliding_windows(seq, 9, T, stride)
        scored = [t for _, tg in wins for t in tg]
        assert scored == seq[9:]
        for ctx, tg in wins:
            assert len(ctx) + len(tg) - 1 <= T and len(ctx) >= 1
        assert all(len(ctx) >= T - stride for ctx, _ in wins[1:])


def test_loglikelihood_equals_model_including_window_boundaries(runner, tok):
    from megatron.eval.harness import MegatronGPTLM
    lm = MegatronGPTLM(runner, tok, batch_size=3)
    reqs = [("Hello", " world"),                       # short
            ("", "abc"),                               # empty context -> EOD prefix
            ("a long context that overflows the window", " tail!"),  # truncated context
            ("ctx", " a continuation longer than sixteen tokens")]  # continuation > seq_length
    got = lm.loglikelihood([request(*r) for r in reqs])
    ids = [(tok.tokenize(c) if c else [tok.eod], tok.tokenize(x)) for c, x in reqs]
    want = []
    for ctx, cont in ids[:3]:
        whole = (ctx + cont)[-(T + 1):]
        want.append(by_hand(runner, whole[:-1], cont))
    ctx, cont = ids[3]  # rolling windows over the continuation, as lm-eval's
    seq, total = ctx + cont, 0.0
    for start in range(len(ctx), len(seq), T):
        end = min(len(seq), start + T)
        total += by_hand(runner, seq[end - 1 - T:end - 1], seq[start:end])
    want.append(total)
    for (lp, greedy), w in zip(got, want):
        assert lp == pytest.approx(w, abs=1e-4)
        assert isinstance(greedy, bool)


def test_is_greedy_flag(runner, tok):
    from megatron.eval.harness import MegatronGPTLM
    lm = MegatronGPTLM(runner, tok)
    ctx = tok.tokenize("xy")
    with torch.no_grad():
        nxt = int(runner.model(torch.tensor([ctx]))[0, -1].argmax())
    other = (nxt + 1) % 256
    (_, g1), (_, g2) = lm._loglikelihood_tokens([(None, ctx, [nxt]), (None, ctx, [other])])
    assert g1 and not g2


def test_loglikelihood_rolling_equals_full_text_log_probability(runner, tok):
    from megatron.eval.harness import MegatronGPTLM
    lm = MegatronGPTLM(runner, tok, batch_size=2)
    short, long = "tiny text", "a text of fifty-odd bytes, longer than three windows of 16"
    got = lm.loglikelihood_rolling([request(short), request(long)])
    s = tok.tokenize(short)
    assert got[0] == pytest.approx(by_hand(runner, [tok.eod] + s[:-1], s), abs=1e-4)
    seq = [tok.eod] + tok.tokenize(long)  # every token once, with all the context a window allows
    total = by_hand(runner, seq[:T], seq[1:T + 1])
    for start in range(T + 1, len(seq), T):
        end = min(len(seq), start + T)
        total += by_hand(runner, seq[end - 1 - T:end - 1], seq[start:end])
    assert got[1] == pytest.approx(total, abs=1e-4)


def test_perplexity_with_stride_and_bits_per_byte(runner, tok):
    from megatron.eval.text_perplexity import text_perplexity
    short = "short one"  # shorter than the context: any stride gives the exact computation
    ids = tok.tokenize(short)
    exact = -by_hand(runner, [tok.eod] + ids[:-1], ids)
    for stride in (1, 5, T):
        st = text_perplexity(runner, tok, [short], stride=stride)
        assert st.nll == pytest.approx(exact, abs=1e-4) and st.tokens == len(ids)
    text = "é, a longer document: more than two windows of sixteen tokens"
    seq = [tok.eod] + tok.tokenize(text)
    stride = 5
    st = text_perplexity(runner, tok, [text, short], stride=stride, batch_size=3)
    nll = -by_hand(runner, seq[:T], seq[1:T + 1])  # then each token sees >= T - stride context
    for start in range(T + 1, len(seq), stride):
        end = min(len(seq), start + stride)
        nll -= by_hand(runner, seq[end - 1 - T:end - 1], seq[start:end])
    assert st.nll == pytest.approx(nll + exact, abs=1e-4)
    assert st.tokens == len(seq) - 1 + len(ids) and st.documents == 2
    assert st.bytes == len(text.encode()) + len(short.encode()) and st.bytes > len(text) + len(short) - 1
    assert st.bits_per_byte == pytest.approx(st.nats_per_token * st.tokens / (math.log(2) * st.bytes))
    assert st.perplexity == pytest.approx(math.exp(st.nll / st.tokens))
