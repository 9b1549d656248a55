"""On a GPU (skipped without one): the three attention kernels agree in forward and backward for
every mask kind, with and without ALiBi, in fp32 and bf16, at a realistic size; and the full
model gives the same loss and gradients with each kernel. Run on the device machine with
`python -m pytest tests/gpu -q`."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

B, NH, T, HS = 2, 4, 256, 64


def _mask_kinds(device):
    half, third = T // 2, T // 3
    docs = torch.zeros(B, T, dtype=torch.long, device=device)
    docs[0, half:] = 1
    docs[1, third:] = 1
    docs[1, 2 * third:] = 2
    return {"causal": {}, "prefix": dict(prefix_lengths=torch.tensor([40, 130], device=device)),
            "documents": dict(document_ids=docs),
            "prefix_documents": dict(prefix_lengths=torch.tensor([60, 20], device=device),
                                     document_ids=docs)}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("kind", ["causal", "prefix", "documents", "prefix_documents"])
def test_eager_sdpa_flex_agree_on_gpu(kind, alibi, dtype, tol):
    from megatron.model import kernels, masks
    from megatron.model.positional import alibi_bias, alibi_slopes

    dev = torch.device("cuda")
    torch.manual_seed(0)
    kw = _mask_kinds(dev)[kind]
    q, k, v = (torch.randn(B, NH, T, HS, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))
    pos = torch.arange(T, device=dev).expand(B, T)
    slopes = alibi_slopes(NH).to(dev) if alibi else None
    bias = alibi_bias(slopes, pos) if alibi else None
    mask = masks.dense_mask(T, dev, **kw) if kw else None
    scale = HS ** -0.5
    ref = kernels.eager_attention(q.double(), k.double(), v.double(), mask=mask,
                                  bias=None if bias is None else bias.double(), scale=scale,
                                  softmax_in_fp32=False)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    outs = {
        "eager": kernels.eager_attention(q, k, v, mask=mask, bias=bias, scale=scale,
                                         softmax_in_fp32=True),
        "sdpa": kernels.sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale),
        # --sdpa-backend cudnn (falls through to the next kernel where cuDNN cannot take it)
        "sdpa_cudnn": kernels.sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale,
                                             backend="cudnn"),
        "flex": kernels.flex_attention(q, k, v, block_mask=masks.block_mask(T, dev, **kw),
                                       scale=scale, alibi_slopes=slopes, position_ids=pos),
    }
    for name, out in outs.items():
        err = (out.double() - ref).norm() / ref.norm()
        assert err < tol, (name, err.item())
        grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
        for which, g, rg in zip("qkv", grads, ref_grads):
            gerr = (g.double() - rg).norm() / rg.norm()
            assert gerr < 2 * tol, (name, which, gerr.item())


@pytest.mark.parametrize("pe", ["rope", "alibi"])
@pytest.mark.parametrize("kind", ["causal", "prefix", "documents"])
def test_full_model_same_loss_and_grads_with_each_kernel_and_compiled(pe, kind):
    """GPTModel (fp32) with the eager, SDPA and FlexAttention kernels, and with SDPA and
    FlexAttention inside --torch-compile'd layers (block mask built once per forward; q, k, v
    as token-major strided views): equal losses and gradients."""
    from megatron.config.schema import ModelConfig, ParallelConfig
    from megatron.model.compile import compile_layers
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    initialize_parallel(ParallelConfig())
    dev = torch.device("cuda")
    kw = _mask_kinds(dev)[kind]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 512, (B, T), generator=g).to(dev)
    labels = torch.roll(tokens, -1, 1)
    results = {}
    for name in ("eager", "sdpa", "flex", "sdpa_compiled", "flex_compiled"):
        cfg = ModelConfig(num_layers=2, hidden_size=256, num_attention_heads=NH, seq_length=T,
                          vocab_size=512, hidden_dropout=0.0, attention_dropout=0.0,
                          position_embedding_type=pe,
                          attention_kernel=name.replace("_compiled", ""))
        torch.manual_seed(0)
        model = GPTModel(cfg).to(dev)
        if name.endswith("_compiled"):
            compile_layers(model)
        loss = model.loss(model(tokens, **kw), labels, torch.ones(B, T, device=dev))
        loss.backward()
        results[name] = (loss.item(), [p.grad.detach().clone() for p in model.parameters()])
    ref_loss, ref_grads = results["eager"]
    for name, (loss, grads) in results.items():
        assert abs(loss - ref_loss) < 1e-4 * abs(ref_loss), (name, loss, ref_loss)
        for a, b in zip(grads, ref_grads):
            assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6, name
