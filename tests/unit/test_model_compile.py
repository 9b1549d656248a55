"""Regional compilation keeps the model's function and its parameter names."""

import pytest

from distributed import run_on_ranks


def _compiled_equals_eager(rank, world_size, selective=False):
    """selective: the compiled model also recomputes the attention core in backward
    (--recompute-granularity selective inside a compiled layer)."""
    import torch

    from megatron.config.cli import parse_config
    from megatron.model.compile import compile_layers
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", "16", "--position-embedding-type", "rope",
                        "--hidden-dropout", "0", "--attention-dropout", "0"])
    cfg = cfg.replace(model={"vocab_size": 128})
    initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    eager = GPTModel(cfg.model)
    torch.manual_seed(0)
    compiled = GPTModel(cfg.model)
    names = [n for n, _ in compiled.named_parameters()]
    if selective:
        from megatron.model.recompute import enable_selective_recompute
        assert enable_selective_recompute(compiled) == 2
    assert compile_layers(compiled, backend="aot_eager") == 2
    assert [n for n, _ in compiled.named_parameters()] == names
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    out = []
    for model in (eager, compiled):
        loss = model.loss(model(tokens), torch.roll(tokens, -1, 1), torch.ones(2, 16))
        loss.backward()
        out.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = out
    return abs(l1 - l2), max((a - b).abs().max().item() for a, b in zip(g1, g2))


@pytest.mark.parametrize("selective", [False, True])
def test_compiled_layers_give_the_eager_loss_and_grads(selective):
    [(dloss, dgrad)] = run_on_ranks(_compiled_equals_eager, 1, args=(selective,), timeout=300)
    assert dloss < 1e-6 and dgrad < 1e-6


def _flex_compiled_equals_eager(rank, world_size):
    """Inductor-compiled layers with FlexAttention (shared block mask; rotated q, k beside a
    strided v) against the same model eager, forward only: torch has no flex backward on CPU,
    and inductor cannot lower ALiBi's score_mod on CPU (tests/gpu covers both on CUDA)."""
    import torch
    from torch._dynamo.utils import counters

    from megatron.config.schema import ModelConfig, ParallelConfig
    from megatron.model.compile import compile_layers
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    initialize_parallel(ParallelConfig())
    g = torch.Generator().manual_seed(3)
    T = 128
    tokens = torch.randint(0, 128, (2, T), generator=g)
    prefix_lengths = torch.tensor([5, 70])
    document_ids = torch.cumsum((torch.rand(2, T, generator=g) < 0.05).long(), dim=1)
    diffs = {}
    for pe in ("rope", "learned_absolute"):
        cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=T,
                          vocab_size=128, hidden_dropout=0.0, attention_dropout=0.0,
                          position_embedding_type=pe, attention_kernel="flex")
        torch.manual_seed(0)
        eager = GPTModel(cfg).eval()
        compiled = GPTModel(cfg).eval()
        compiled.load_state_dict(eager.state_dict())
        compile_layers(compiled)
        counters.clear()
        with torch.no_grad():
            for masks in ({}, {"prefix_lengths": prefix_lengths},
                          {"prefix_lengths": prefix_lengths, "document_ids": document_ids}):
                diff = (compiled(tokens, **masks) - eager(tokens, **masks)).abs().max().item()
                diffs[(pe, tuple(masks))] = diff
        diffs[(pe, "graph breaks")] = sum(counters["graph_break"].values())
    return diffs


def test_compiled_flex_attention_layers_equal_eager_and_do_not_break():
    [diffs] = run_on_ranks(_flex_compiled_equals_eager, 1, timeout=600)
    for key, value in diffs.items():
        if key[1] == "graph breaks":
            assert value == 0, key
        else:
            assert value < 1e-5, (key, value)
