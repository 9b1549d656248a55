"""Selective recomputation recomputes the attention core in backward and changes nothing else:
same loss and gradients, dropout included (the dropout streams are replayed)."""
import pytest
import torch

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_selective_recompute_equals_plain_backward(tp1_layout, kernel):
    from megatron.model.attention import SelfAttention
    from megatron.model.gpt import GPTModel
    from megatron.model.recompute import enable_selective_recompute

    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", "16", "--attention-dropout", "0.2", "--hidden-dropout",
                        "0.1", "--attention-kernel", kernel]).replace(model={"vocab_size": 128})
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    results = []
    for selective in (False, True):
        torch.manual_seed(0)
        model = GPTModel(cfg.model)
        if selective:
            assert enable_selective_recompute(model) == 2
        calls = []
        original = SelfAttention._attend
        SelfAttention._attend = lambda self, *a: calls.append(1) or original(self, *a)
        try:
            loss = model.loss(model(tokens), torch.roll(tokens, -1, 1), torch.ones(2, 16))
            loss.backward()
        finally:
            SelfAttention._attend = original
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()], len(calls)))
    (l0, g0, n0), (l1, g1, n1) = results
    assert (n0, n1) == (2, 4)  # the core ran again in backward, once per layer
    assert l0 == l1
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_full_and_selective_together_is_an_error():
    cfg = parse_config(["--train-iters", "2", "--mock-data", "--checkpoint-activations",
                        "--recompute-granularity", "selective"])
    with pytest.raises(ConfigError, match="--recompute-granularity selective"):
        validate_config(cfg, 1)
