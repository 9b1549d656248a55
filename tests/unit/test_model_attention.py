"""Masks (hand-made patterns), kernel equivalence (eager / SDPA / flex) and prefix-LM guarantees."""
import pytest
import torch

from megatron.config.schema import ModelConfig
from megatron.model import kernels, masks
from megatron.model.positional import alibi_bias, alibi_slopes


def test_dense_mask_prefix_pattern():
    m = masks.dense_mask(5, "cpu", prefix_lengths=torch.tensor([2]))[0, 0].int()
    assert m.tolist() == [[1, 1, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0],
                          [1, 1, 1, 1, 0],
                          [1, 1, 1, 1, 1]]


def test_dense_mask_prefix_and_documents_pattern():
    m = masks.dense_mask(5, "cpu", prefix_lengths=torch.tensor([2, 0]),
                         document_ids=torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 2]]))[:, 0].int()
    assert m[0].tolist() == [[1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [0, 0, 0, 1, 0],
                             [0, 0, 0, 1, 1]]
    assert m[1].tolist() == [[1, 0, 0, 0, 0],
                             [0, 1, 0, 0, 0],
                             [0, 1, 1, 0, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 0, 0, 1]]
    assert masks.dense_mask(3, "cpu")[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


MASK_KINDS = {
    "causal": {},
    "prefix": dict(prefix_lengths=torch.tensor([3, 7])),
    "documents": dict(document_ids=torch.tensor([[0] * 4 + [1] * 8 + [2] * 4, [0] * 10 + [1] * 6])),
    "prefix_documents": dict(prefix_lengths=torch.tensor([6, 2]),
                             document_ids=torch.tensor([[0] * 8 + [1] * 8, [0] * 3 + [1] * 13])),
}


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("kind", list(MASK_KINDS))
def test_kernels_agree(kind, alibi):
    B, nh, T, hs = 2, 3, 16, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, T, hs, generator=g, requires_grad=True) for _ in range(3))
    kw = MASK_KINDS[kind]
    pos = torch.arange(T).expand(B, T)
    slopes = alibi_slopes(nh) if alibi else None
    mask = None if not kw else masks.dense_mask(T, "cpu", **kw)
    bias = alibi_bias(slopes, pos) if alibi else None
    scale = hs ** -0.5
    eager = kernels.eager_attention(q, k, v, mask=mask, bias=bias, scale=scale, softmax_in_fp32=True)
    sdpa = kernels.sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale)
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    ge = torch.autograd.grad(eager.square().sum(), (q, k, v))
    gs = torch.autograd.grad(sdpa.square().sum(), (q, k, v))
    for a, b in zip(gs, ge):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # FlexAttention has no CPU backward (torch raises); compare its forward.
    with torch.no_grad():
        bm = masks.block_mask(T, "cpu", **kw)
        flex = kernels.flex_attention(q.detach(), k.detach(), v.detach(), block_mask=bm, scale=scale, alibi_slopes=slopes,
                                      position_ids=pos)
    torch.testing.assert_close(flex, eager.detach(), atol=1e-5, rtol=1e-5)


def test_query_key_layer_scaling_is_value_preserving():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    a = kernels.eager_attention(q, k, v, mask=None, bias=None, scale=0.5, softmax_in_fp32=False)
    b = kernels.eager_attention(q, k, v, mask=None, bias=None, scale=0.5, softmax_in_fp32=True,
                                layer_scale=7.0)
    torch.testing.assert_close(a, b)


def test_auto_kernel_choice():
    choose = kernels.choose_kernel
    assert choose("auto", device_type="cpu", plain_causal=False, has_alibi=True, dropout_active=False) == "sdpa"
    assert choose("auto", device_type="cuda", plain_causal=True, has_alibi=False, dropout_active=False) == "sdpa"
    assert choose("auto", device_type="cuda", plain_causal=False, has_alibi=False, dropout_active=False) == "flex"
    assert choose("auto", device_type="cuda", plain_causal=True, has_alibi=True, dropout_active=False) == "flex"
    assert choose("auto", device_type="cuda", plain_causal=False, has_alibi=True, dropout_active=True) == "sdpa"
    assert choose("eager", device_type="cuda", plain_causal=True, has_alibi=False, dropout_active=False) == "eager"


# --- whole-model guarantees (TP = 1, in process) ---------------------------------------------

@pytest.fixture(scope="module")
def tp1(tp1_layout):
    return tp1_layout


def _model(**kw):
    from megatron.model.gpt import GPTModel
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16,
                      vocab_size=128, hidden_dropout=0.0, attention_dropout=0.0, **kw)
    torch.manual_seed(0)
    return GPTModel(cfg).eval()


MODEL_KINDS = [dict(position_embedding_type=p, attention_kernel=k)
               for p in ("learned_absolute", "rope", "alibi") for k in ("eager", "sdpa")]


@pytest.mark.parametrize("kw", MODEL_KINDS, ids=lambda kw: "-".join(kw.values()))
def test_prefix_lm_guarantees(tp1, kw):
    model = _model(**kw)
    T, P = 16, 6
    tokens = torch.randint(0, 128, (2, T), generator=torch.Generator().manual_seed(1))
    prefix = torch.tensor([P, 2])
    base = model(tokens, prefix_lengths=prefix)

    # 1. A target (position >= prefix) never influences the prefix or earlier targets.
    t2 = tokens.clone(); t2[0, 10] = (t2[0, 10] + 1) % 128
    out = model(t2, prefix_lengths=prefix)
    torch.testing.assert_close(out[0, :10], base[0, :10], atol=0, rtol=0)
    assert not torch.allclose(out[0, 10:], base[0, 10:])
    torch.testing.assert_close(out[1], base[1], atol=0, rtol=0)  # other sample untouched

    # 2. Within the prefix attention is bidirectional: a later prefix token reaches earlier ones...
    t3 = tokens.clone(); t3[0, P - 1] = (t3[0, P - 1] + 1) % 128
    out = model(t3, prefix_lengths=prefix)
    assert not torch.allclose(out[0, 0], base[0, 0])
    # ...which plain causal attention forbids.
    causal = model(tokens)
    torch.testing.assert_close(model(t3)[0, :P - 1], causal[0, :P - 1], atol=0, rtol=0)

    # 3. Sample 1 (prefix 2): changing position 4 leaves positions < 4 unchanged.
    t4 = tokens.clone(); t4[1, 4] = (t4[1, 4] + 1) % 128
    torch.testing.assert_close(model(t4, prefix_lengths=prefix)[1, :4], base[1, :4], atol=0, rtol=0)


@pytest.mark.parametrize("kw", MODEL_KINDS, ids=lambda kw: "-".join(kw.values()))
def test_documents_are_isolated(tp1, kw):
    model = _model(**kw)
    docs = torch.tensor([[0] * 5 + [1] * 6 + [2] * 5])
    pos = torch.tensor([list(range(5)) + list(range(6)) + list(range(5))])
    tokens = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    base = model(tokens, position_ids=pos, document_ids=docs)
    t2 = tokens.clone(); t2[0, 6] = (t2[0, 6] + 1) % 128  # inside document 1
    out = model(t2, position_ids=pos, document_ids=docs)
    torch.testing.assert_close(out[0, :6], base[0, :6], atol=0, rtol=0)
    torch.testing.assert_close(out[0, 11:], base[0, 11:], atol=0, rtol=0)
    # a packed document equals the same document run alone
    alone = model(tokens[:, 11:], position_ids=pos[:, 11:])
    torch.testing.assert_close(base[:, 11:], alone, atol=1e-5, rtol=1e-5)


def test_model_kernels_agree_with_flex_forward(tp1):
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    kw = dict(prefix_lengths=torch.tensor([4, 9]),
              document_ids=torch.tensor([[0] * 8 + [1] * 8, [0] * 16]))
    outs = {}
    for k in ("eager", "sdpa", "flex"):
        with torch.no_grad():
            outs[k] = _model(position_embedding_type="alibi", attention_kernel=k)(tokens, **kw)
    torch.testing.assert_close(outs["sdpa"], outs["eager"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["flex"], outs["eager"], atol=1e-5, rtol=1e-5)


def test_tied_and_untied_head(tp1):
    tied = _model()
    assert tied.head.output_layer.weight is None
    untied = _model(untie_embeddings_and_output_weights=True)
    assert untied.head.output_layer.weight.shape == (128, 32)
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 128 * 32
    logits = tied(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 128) and logits.dtype == torch.float32
    loss = tied.loss(logits, torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1., 1., 0., 0.]]))
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert torch.isfinite(logits).all()  # the loss did not modify logits in place
    ref = torch.nn.functional.cross_entropy(logits[0, :2], torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(loss, ref)


def test_init_std_and_scaled_output_projections(tp1):
    import math
    from megatron.model.gpt import GPTModel
    cfg = ModelConfig(num_layers=8, hidden_size=256, num_attention_heads=4, vocab_size=512)
    torch.manual_seed(0)
    m = GPTModel(cfg)
    std = lambda p: p.detach().std().item()  # noqa: E731
    assert abs(std(m.embedding.weight) - 0.02) < 0.002
    assert abs(std(m.layers[0].attention.qkv.weight) - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * 8)
    assert abs(std(m.layers[0].attention.dense.weight) - scaled) < 0.1 * scaled
    assert abs(std(m.layers[0].mlp.fc2.weight) - scaled) < 0.1 * scaled
    assert m.layers[0].mlp.fc1.bias.abs().sum() == 0
    assert torch.equal(m.layers[0].input_norm.weight, torch.ones(256))


def test_sdpa_backend_preference_order():
    """--sdpa-backend puts its kernel first and keeps the others as fallbacks (cuDNN does not
    take fp32, for one); auto leaves torch's own order; on CPU the preference is not applied."""
    from torch.nn.attention import SDPBackend

    from megatron.model import kernels
    assert kernels._sdpa_priority("auto") is None
    order = kernels._sdpa_priority("cudnn")
    assert order[0] == SDPBackend.CUDNN_ATTENTION and len(set(order)) == 4
    assert kernels._sdpa_priority("flash")[0] == SDPBackend.FLASH_ATTENTION
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    ref = kernels.sdpa_attention(q, k, v, mask=None, bias=None, scale=0.3)
    out = kernels.sdpa_attention(q, k, v, mask=None, bias=None, scale=0.3, backend="math")
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("position", ["learned_absolute", "rope"])
@pytest.mark.parametrize("selective", [False, True])
def test_fa4_wiring_matches_sdpa(tp1, monkeypatch, position, selective):
    """--attention-kernel fa4's path through SelfAttention (the packed qkv, re-packed after
    rotary; the output's reshape; selective recomputation) gives the SDPA path's output and
    gradients, with FlashAttention-4's kernel (GPU only; tests/gpu/test_fa4_attention_gpu.py)
    replaced by SDPA on the packed input it receives."""
    from megatron.model import fa4_attention

    calls = []

    def packed_sdpa(qkv, scale):  # qkv (B, T, nh, 3, hs) -> (B, T, nh, hs), as the kernel
        calls.append(tuple(qkv.shape))
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale).transpose(1, 2)

    monkeypatch.setattr(fa4_attention, "fa4_causal_attention", packed_sdpa)
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
    results = {}
    for kernel in ("sdpa", "fa4"):
        model = _model(position_embedding_type=position, attention_kernel=kernel).train()
        for layer in model.layers:
            layer.attention.recompute_core = selective
        out = model(tokens)
        out.float().square().mean().backward()
        results[kernel] = [out.detach()] + [p.grad for p in model.parameters()]
    assert calls and all(shape == (2, 16, 4, 3, 8) for shape in calls)
    for got, ref in zip(results["fa4"], results["sdpa"]):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
