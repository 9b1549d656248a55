"""Start-up validation messages and TP-aware dropout RNG streams."""
import dataclasses

import pytest
import torch

from megatron.config.schema import ModelConfig
from megatron.model.rng import DropoutRNG, dropout
from megatron.model.validate import check_model_config

OK = ModelConfig(vocab_size=128, hidden_size=64, num_attention_heads=4)


def test_valid_config_passes():
    check_model_config(OK, 1)
    check_model_config(dataclasses.replace(OK, position_embedding_type="rope",
                                           rotary_percent=0.25), 4)


@pytest.mark.parametrize("overrides,tp,match", [
    (dict(position_embedding_type="alibi", rotary_percent=0.5), 1, r"alibi.*--rotary-percent.*0\.5"),
    (dict(position_embedding_type="xpos"), 1, r"--position-embedding-type 'xpos'"),
    (dict(glu_activation="gluglu"), 1, r"--glu-activation 'gluglu'"),
    (dict(num_attention_heads=4), 3, r"--num-attention-heads 4 .*--tensor-model-parallel-size 3"),
    (dict(hidden_size=66), 1, r"--hidden-size 66 .*--num-attention-heads 4"),
    (dict(rotary_percent=0.0), 1, r"--rotary-percent 0\.0 must be in \(0, 1\]"),
    (dict(rotary_percent=1.5), 1, r"--rotary-percent 1\.5 must be in \(0, 1\]"),
    (dict(position_embedding_type="rope", hidden_size=40, num_attention_heads=4,
          rotary_percent=0.5), 1, r"gives 5 rotary dims; it must be even"),
    (dict(attention_kernel="flash"), 1, r"--attention-kernel 'flash'"),
    (dict(sdpa_backend="fa3"), 1, r"--sdpa-backend 'fa3' is unknown"),
    (dict(attention_kernel="flex", attention_dropout=0.1), 1, r"flex.*--attention-dropout"),
    (dict(normalization="BatchNorm"), 1, r"--normalization 'BatchNorm'"),
    (dict(vocab_size=130), 4, r"vocab size 130.*--tensor-model-parallel-size 4"),
])
def test_invalid_config_names_flags(overrides, tp, match):
    with pytest.raises(ValueError, match=match):
        check_model_config(dataclasses.replace(OK, **overrides), tp)


def test_dropout_streams_are_tp_aware_and_leave_default_generator_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x = torch.ones(1000)
    r0, r1 = DropoutRNG(42, tp_rank=0), DropoutRNG(42, tp_rank=1)
    rep0, rep1 = (dropout(x, 0.5, True, r, "replicated") for r in (r0, r1))
    sh0, sh1 = (dropout(x, 0.5, True, r, "sharded") for r in (r0, r1))
    assert torch.equal(rep0, rep1)  # replicated activations: same mask on every TP rank
    assert not torch.equal(sh0, sh1)  # sharded activations: independent per TP rank
    assert not torch.equal(rep0, dropout(x, 0.5, True, r0, "replicated"))  # stream advances
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(dropout(x, 0.5, False, r0, "sharded"), x)
