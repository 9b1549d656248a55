"""ALiBi slopes (vs BLOOM's published formula and transformers), RoPE and sinusoidal basics."""
import math

import pytest
import torch

from megatron.model.positional import (alibi_bias, alibi_slopes, apply_rotary, rotary_cos_sin,
                                       sinusoidal_embedding)


def _bloom_formula(n):
    """BLOOM / ALiBi-paper slopes written out independently (closed form, not recursive)."""
    p = 2 ** math.floor(math.log2(n))
    base = 2 ** (-(2 ** -(math.log2(p) - 3)))
    slopes = [base ** k for k in range(1, p + 1)]
    if p != n:
        extra = 2 ** (-(2 ** -(math.log2(2 * p) - 3)))
        slopes += [extra ** k for k in range(1, 2 * min(p, n - p), 2)]
    return torch.tensor(slopes)


@pytest.mark.parametrize("heads", [12, 16, 30, 112])
def test_alibi_slopes_match_bloom(heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    ours = alibi_slopes(heads)
    assert ours.shape == (heads,)
    torch.testing.assert_close(ours, _bloom_formula(heads).float(), rtol=1e-6, atol=0)
    hf = build_alibi_tensor(torch.ones(1, 4), heads, torch.float32)  # (nh, 1, T) = slope * k
    torch.testing.assert_close(ours, hf[:, 0, 1], rtol=1e-6, atol=0)


def test_alibi_bias_equals_bloom_up_to_row_constant_under_causal_mask():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    nh, T = 6, 7
    ours = alibi_bias(alibi_slopes(nh), torch.arange(T)[None])[0]  # (nh, T, T)
    hf = build_alibi_tensor(torch.ones(1, T), nh, torch.float32)  # (nh, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p_ours = torch.softmax(ours.masked_fill(~causal, -torch.inf), -1)
    p_hf = torch.softmax(hf.expand(nh, T, T).masked_fill(~causal, -torch.inf), -1)
    torch.testing.assert_close(p_ours, p_hf)


def test_rotary_partial_rotates_only_leading_dims_and_preserves_relative_scores():
    B, nh, T, hs, rot = 1, 2, 6, 8, 4
    q, k = torch.randn(B, T, nh, hs), torch.randn(B, T, nh, hs)
    cos, sin = rotary_cos_sin(torch.arange(T)[None], rot, 10000.0)  # (B, T, 1, rot)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    torch.testing.assert_close(qr[..., rot:], q[..., rot:])
    torch.testing.assert_close(kr[..., rot:], k[..., rot:])
    # shifting all positions leaves q.k unchanged (relative encoding)
    cos2, sin2 = rotary_cos_sin(torch.arange(T)[None] + 5, rot, 10000.0)
    def scores(cos, sin):  # (B, nh, T, T)
        qh, kh = (apply_rotary(t, cos, sin).transpose(1, 2) for t in (q, k))
        return qh @ kh.transpose(-1, -2)
    s1, s2 = scores(cos, sin), scores(cos2, sin2)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(qr[..., :rot], q[..., :rot])


def test_sinusoidal_layout():
    pe = sinusoidal_embedding(torch.arange(3)[None], 8, torch.float32)[0]
    assert pe.shape == (3, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(pe[2, 0], torch.tensor(math.sin(2.0)))


def test_rotary_tables_made_once_per_forward_equal_each_layers_own(tp1_layout):
    """GPTModel hands every layer the (cos, sin) of the batch's positions (made once, in the
    activations' dtype); the same layers making their own give the same logits, also for
    per-document positions."""
    import torch

    from megatron.config.schema import ModelConfig
    from megatron.model.gpt import GPTModel
    from megatron.model.layer import shared_layer_inputs
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16,
                      vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0,
                      position_embedding_type="rope", rotary_percent=0.5)
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(10), torch.arange(6)]).expand(2, 16)
    for pos in (None, positions):
        p = torch.arange(16).expand(2, 16) if pos is None else pos
        block_mask, (cos, sin) = shared_layer_inputs(model.layers[0], 16, p, None, None,
                                                     torch.float32)
        assert block_mask is None  # SDPA on CPU: no FlexAttention mask to share
        assert cos.shape == (2, 16, 1, 4)  # (B, T, 1, rot) for (B, T, nh, hs) q and k
        with torch.no_grad():
            h = model.embedding(tokens, p)
            for layer in model.layers:
                h = layer(h, p)  # rotary=None: the attention makes its own tables
            own = model.head(h, model.embedding.weight)
            shared = model(tokens, position_ids=pos)
        torch.testing.assert_close(shared, own, rtol=0, atol=0)
