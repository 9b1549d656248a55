"""megatron/trainer/universal.py pieces that need no process group: block names, vocabulary
rows refitted to another padding, and where the Adam step count is put."""
from collections import defaultdict
from types import SimpleNamespace

import torch

from megatron.trainer.universal import _fit_rows, _prepare_optimizer_states, block_of


def test_block_names():
    assert block_of("layers.12.mlp.fc1.weight") == "layers.12"
    assert block_of("embedding.word_embeddings.weight") == "embedding"
    assert block_of("head.final_norm.bias") == "head"


def test_vocabulary_rows_follow_the_new_padding():
    w = torch.arange(12.0).view(6, 2)
    assert torch.equal(_fit_rows("embedding.word_embeddings.weight", w, 4), w[:4])
    grown = _fit_rows("head.output_layer.weight", w, 8)
    assert torch.equal(grown[:6], w) and not grown[6:].any()
    assert _fit_rows("layers.0.mlp.fc1.weight", w, 4) is w  # not a vocabulary tensor


def test_adam_step_lands_where_the_kernel_wants_it():
    """Fused/capturable AdamW wants `step` on the parameters' device (a GPU run failed with
    a CPU one); the plain kernel keeps it on the CPU."""
    for fused, device in ((True, "meta"), (False, "cpu")):
        flat = torch.zeros(4, device="meta")
        opt = SimpleNamespace(param_groups=[{"params": [flat], "fused": fused}],
                              state=defaultdict(dict))
        _prepare_optimizer_states(opt, 7)
        state = opt.state[flat]
        assert state["step"].device.type == device and state["step"].shape == ()
        if device == "cpu":
            assert float(state["step"]) == 7
        assert state["exp_avg"].shape == (4,) and state["exp_avg_sq"].device.type == "meta"
