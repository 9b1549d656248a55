"""TP invariance: the same seed gives the same logits and (gathered) gradients for TP = 1, 2, 4.

One run_on_ranks spawn per TP size; every variant runs inside the ranks.
"""
import pytest
import torch

from distributed import run_on_ranks

B, T, V = 2, 16, 128
BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=T, vocab_size=V,
            hidden_dropout=0.0, attention_dropout=0.0)

PREFIX = "prefix"
DOCS = "docs"

# name -> (ModelConfig overrides, which masks to feed)
VARIANTS = {
    "learned_gelu_layernorm": (dict(), ()),
    "sinusoidal": (dict(position_embedding_type="sinusoidal"), ()),
    "rope": (dict(position_embedding_type="rope"), ()),
    "rope_partial": (dict(position_embedding_type="rope", rotary_percent=0.5, rotary_base=500.0), ()),
    "alibi": (dict(position_embedding_type="alibi"), ()),
    "alibi_6_heads": (dict(position_embedding_type="alibi", hidden_size=48, num_attention_heads=6), ()),
    "no_positions": (dict(position_embedding_type="none"), ()),
    "gelu_tanh": (dict(activation="gelu_tanh"), ()),
    "geglu": (dict(glu_activation="geglu"), ()),
    "swiglu": (dict(glu_activation="swiglu"), ()),
    "reglu": (dict(glu_activation="reglu"), ()),
    "liglu": (dict(glu_activation="liglu", ffn_hidden_size=96), ()),
    "rmsnorm_nobias_untied": (dict(normalization="RMSNorm", add_bias_linear=False,
                                   untie_embeddings_and_output_weights=True), ()),
    "prefix_rope": (dict(position_embedding_type="rope"), (PREFIX,)),
    "documents_learned": (dict(), (DOCS,)),
    "prefix_documents_alibi_eager": (dict(position_embedding_type="alibi", attention_kernel="eager"),
                                     (PREFIX, DOCS)),
    "prefix_documents_alibi_sdpa": (dict(position_embedding_type="alibi", attention_kernel="sdpa"),
                                    (PREFIX, DOCS)),
    "sandwich_embedln_parallel": (dict(sandwich_layernorm=True, embed_layernorm=True,
                                       parallel_attention_mlp=True), ()),
    "qk_layer_scaling_fp32_softmax": (dict(apply_query_key_layer_scaling=True,
                                           attention_softmax_in_fp32=True, attention_kernel="eager"), ()),
    "hidden_dropout": (dict(hidden_dropout=0.1), ()),
    "llama_like_prefix": (dict(position_embedding_type="rope", rotary_percent=0.5,
                               glu_activation="swiglu", normalization="RMSNorm", add_bias_linear=False,
                               untie_embeddings_and_output_weights=True), (PREFIX,)),
}
# every variant whose heads split over 4 ranks
TP4_VARIANTS = [n for n, (o, _) in VARIANTS.items() if o.get("num_attention_heads", 4) % 4 == 0]


def _inputs(feeds):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    loss_mask = (torch.rand(B, T, generator=g) > 0.2).float()
    kw = {}
    if PREFIX in feeds:
        kw["prefix_lengths"] = torch.tensor([5, 9])
    if DOCS in feeds:
        docs = torch.tensor([[0] * 5 + [1] * 6 + [2] * 5, [0] * 8 + [1] * 8])
        kw["document_ids"] = docs
        starts = torch.cat([torch.ones(B, 1, dtype=torch.bool), docs[:, 1:] != docs[:, :-1]], 1)
        idx = torch.arange(T).expand(B, T)
        kw["position_ids"] = idx - torch.cummax(torch.where(starts, idx, 0), dim=1).values
    return tokens, labels, loss_mask, kw


def _gather(t, dim, stride, group, world):
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.contiguous(), group=group)
    chunks = [p.chunk(stride, dim=dim) for p in parts]  # strided: rank r holds chunk r of each stride
    return torch.cat([c[s] for s in range(stride) for c in chunks], dim=dim)


def _run(rank, world_size, names):
    from megatron.config.schema import ModelConfig, ParallelConfig
    from megatron.core import parallel_state as ps
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    initialize_parallel(ParallelConfig(tensor_model_parallel_size=world_size))
    group = ps.get_tensor_model_parallel_group()
    out = {}
    for name in names:
        overrides, feeds = VARIANTS[name]
        cfg = ModelConfig(**{**BASE, **overrides})
        torch.manual_seed(1234)
        model = GPTModel(cfg).train()
        tokens, labels, loss_mask, kw = _inputs(feeds)
        logits = model(tokens, **kw)
        loss = model.loss(logits, labels, loss_mask)
        loss.backward()
        grads, replica_diff = {}, 0.0
        for pname, p in model.named_parameters():
            if getattr(p, "tensor_model_parallel", False):
                grads[pname] = _gather(p.grad, p.partition_dim, p.partition_stride, group, world_size)
            else:  # replicated: every TP rank must hold the same gradient
                full = _gather(p.grad[None], 0, 1, group, world_size)
                replica_diff = max(replica_diff, (full - full[0]).abs().max().item())
                grads[pname] = p.grad
        # numpy: torch tensors would cross the result queue as shared memory of a dead process
        out[name] = dict(logits=_gather(logits.detach(), -1, 1, group, world_size).numpy(),
                         loss=loss.item(), grads={n: g.numpy() for n, g in grads.items()},
                         replica_diff=replica_diff)
    return out if rank == 0 else None


def _to_torch(out):
    for r in out.values():
        r["logits"] = torch.from_numpy(r["logits"])
        r["grads"] = {n: torch.from_numpy(g) for n, g in r["grads"].items()}
    return out


@pytest.fixture(scope="module")
def results():
    names = list(VARIANTS)
    return {1: _to_torch(run_on_ranks(_run, 1, args=(names,), timeout=600)[0]),
            2: _to_torch(run_on_ranks(_run, 2, args=(names,), timeout=600)[0]),
            4: _to_torch(run_on_ranks(_run, 4, args=(TP4_VARIANTS,), timeout=600)[0])}


def _close(a, b, rel=1e-5):
    return (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1e-12)


def _compare(ref, got):
    assert got["logits"].shape == ref["logits"].shape == (B, T, V)
    assert _close(got["logits"], ref["logits"]), (got["logits"] - ref["logits"]).abs().max()
    assert abs(got["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"])
    assert got["replica_diff"] <= 1e-6
    assert got["grads"].keys() == ref["grads"].keys()
    for n, g in ref["grads"].items():
        assert got["grads"][n].shape == g.shape, n
        assert _close(got["grads"][n], g), (n, (got["grads"][n] - g).abs().max(), g.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_tp2_matches_tp1(results, name):
    _compare(results[1][name], results[2][name])


@pytest.mark.slow
@pytest.mark.parametrize("name", TP4_VARIANTS)
def test_tp4_matches_tp1(results, name):
    _compare(results[1][name], results[4][name])


@pytest.mark.slow
def test_variants_differ(results):
    """Guards against options being silently ignored: each variant changes the logits."""
    base = results[1]["learned_gelu_layernorm"]["logits"]
    for name, r in results[1].items():
        if name != "learned_gelu_layernorm":
            assert not torch.allclose(r["logits"], base), name
    assert torch.allclose(results[1]["prefix_documents_alibi_eager"]["logits"],
                          results[1]["prefix_documents_alibi_sdpa"]["logits"], atol=1e-5)
