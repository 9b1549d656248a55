"""megatron.trainer.metrics.count_parameters (what FLOPs per token, MFU, tools/plan.py and
tools/ablate.py's budgets count) equals the parameters of the GPTModel it describes, for every
model variant of the TP-invariance test and a few more combinations."""
import pytest

from megatron.config.schema import ModelConfig
from megatron.trainer.metrics import count_parameters, flops_per_token
from parallel.test_model_tp import BASE, VARIANTS

EXTRA = {
    "rmsnorm_sandwich_embedln": dict(normalization="RMSNorm", sandwich_layernorm=True,
                                     embed_layernorm=True),
    "embedln_untied_sinusoidal": dict(embed_layernorm=True, position_embedding_type="sinusoidal",
                                      untie_embeddings_and_output_weights=True),
    "swiglu_nobias_parallel_rmsnorm": dict(glu_activation="swiglu", add_bias_linear=False,
                                           parallel_attention_mlp=True, normalization="RMSNorm"),
    "learned_longer_max_positions": dict(max_position_embeddings=64, num_layers=3),
}
CASES = {**{name: overrides for name, (overrides, _) in VARIANTS.items()}, **EXTRA}


@pytest.mark.parametrize("name", list(CASES))
def test_count_parameters_equals_the_models(tp1_layout, name):
    from megatron.model.gpt import GPTModel
    cfg = ModelConfig(**{**BASE, **CASES[name]})
    built = sum(p.numel() for p in GPTModel(cfg).parameters())
    assert count_parameters(cfg) == built, (name, cfg.ffn_size)
    assert flops_per_token(cfg) == 6 * built + 12 * cfg.num_layers * cfg.hidden_size * \
        cfg.seq_length


def test_audit_cases():
    """The two miscounts the audit found, by hand for a 2-layer hidden-32 model: RMSNorm has no
    bias (5 norms x 32 fewer than LayerNorm), --embed-layernorm adds one LayerNorm (2 x 32)."""
    ln, rms = ModelConfig(**BASE), ModelConfig(**BASE, normalization="RMSNorm")
    assert count_parameters(ln) - count_parameters(rms) == 5 * 32
    assert count_parameters(ModelConfig(**BASE, embed_layernorm=True)) - count_parameters(ln) \
        == 2 * 32
