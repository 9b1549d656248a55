"""Generation: KV-cache greedy == cache-free greedy == argmax of the full forward each step
(learned, rotary and ALiBi positions, past max_positions too); top-k=1 == greedy; seeded sampling
reproducible; top-k/top-p filters."""
import pytest
import torch

from megatron.config.schema import Config, ModelConfig

T = 12
VARIANTS = {"learned": {}, "rope": dict(position_embedding_type="rope", rotary_percent=0.5),
            "alibi": dict(position_embedding_type="alibi", embed_layernorm=True)}


@pytest.fixture(scope="module")
def layout(tp1_layout):
    return tp1_layout


def make_runner(layout, **overrides):
    from megatron.eval.runner import ModelRunner
    from megatron.model.gpt import GPTModel
    torch.manual_seed(3)
    cfg = Config(model=ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=T,
                                   vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0,
                                   init_method_std=0.5, **overrides))
    return ModelRunner(GPTModel(cfg.model).eval(), cfg, layout)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_with_cache_equals_without_and_full_forward_argmax(layout, variant):
    from megatron.eval.generation import generate
    runner = make_runner(layout, **VARIANTS[variant])
    prompt = [5, 9, 2, 33, 17]
    n = 2 * T  # runs past max_positions: both then re-encode the last T tokens
    cached = generate(runner, prompt, n, use_cache=True)[0]
    plain = generate(runner, prompt, n, use_cache=False)[0]
    assert cached == plain
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(runner.model(torch.tensor([seq[-T:]]))[0, -1].argmax()))
    assert cached == seq[len(prompt):]
    assert len(set(cached)) > 1  # not a degenerate constant sequence
    assert all(layer.attention.kv_cache is None for layer in runner.model.layers)


def test_cached_logits_match_full_forward(layout):
    runner = make_runner(layout, position_embedding_type="alibi")
    toks = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    full = runner.logits(toks)
    runner.use_kv_cache(True)
    step = torch.cat([runner.logits(toks[:, :4]),
                      *(runner.logits(toks[:, i:i + 1], torch.tensor([[i]])) for i in range(4, 7))], 1)
    runner.use_kv_cache(False)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_top_k_1_is_greedy_and_seeded_sampling_is_reproducible(layout):
    from megatron.eval.generation import generate
    runner = make_runner(layout, position_embedding_type="rope")
    prompt = [4, 8, 15, 16]
    greedy = generate(runner, prompt, 10)[0]
    assert generate(runner, prompt, 10, temperature=1.5, top_k=1, seed=1)[0] == greedy
    a = generate(runner, prompt, 10, temperature=1.0, top_p=0.9, seed=7)[0]
    b = generate(runner, prompt, 10, temperature=1.0, top_p=0.9, seed=7)[0]
    c = generate(runner, prompt, 10, temperature=1.0, top_p=0.9, seed=8)[0]
    assert a == b and a != c
    batch = generate(runner, torch.tensor([prompt, prompt[::-1]]), 6)
    assert batch[0] == greedy[:6]
    stopped = generate(runner, prompt, 10, stop_ids=[greedy[2]])[0]
    assert stopped == greedy[:greedy.index(greedy[2]) + 1]
    limited = generate(runner, prompt, 10, vocab_limit=3)[0]
    assert all(t < 3 for t in limited)


def test_filters():
    from megatron.eval.generation import filter_logits
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, top_k=2)[0, :2]).any()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))[0]
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert (~torch.isinf(filter_logits(logits, top_p=0.4)))[0].tolist() == [True, False, False, False]
