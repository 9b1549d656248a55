"""Regional compilation keeps the model's function and its parameter names."""
import pytest
import torch

from distributed import run_on_ranks


def _compiled_equals_eager(rank, world_size):
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


def test_compiled_layers_give_the_eager_loss_and_grads():
    [(dloss, dgrad)] = run_on_ranks(_compiled_equals_eager, 1, timeout=300)
    assert dloss < 1e-6 and dgrad < 1e-6
