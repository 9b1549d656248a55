"""HF transformers mapping: import random small HF models, match logits (fp32, 1e-4), export back."""
import dataclasses
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from megatron.model.hf import registry  # noqa: E402


@pytest.fixture(scope="module")
def tp1(tp1_layout):
    return tp1_layout


HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=120,
                                            n_positions=32, bos_token_id=0, eos_token_id=0),
    "bloom": lambda: transformers.BloomConfig(hidden_size=48, n_layer=2, n_head=6, vocab_size=128),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        vocab_size=128, max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=500),
    "gpt_neox_sequential": lambda: transformers.GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=128, max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=False),
    "llama": lambda: transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=80, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-6),
    "llama_tied": lambda: transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=64, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True),
}


def _hf_model(hf_config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():  # HF inits biases to 0 and norms to 1: perturb so the mapping is tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _ours(cfg, state_dict):
    from megatron.model.gpt import GPTModel
    model = GPTModel(cfg).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_import_matches_hf_logits_and_export_round_trips(tp1, name):
    hf_config = HF_CONFIGS[name]()
    fam = registry.family(hf_config.model_type)
    hf = _hf_model(hf_config)
    cfg = registry.config_from_hf(hf_config)
    V = hf_config.vocab_size
    cfg = dataclasses.replace(cfg, vocab_size=128)  # pad (GPT-2: 120 -> 128)
    hf_sd = hf.state_dict()
    ours = _ours(cfg, fam.state_dict_from_hf(hf_sd, cfg))

    tokens = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got = ours(tokens)[..., :V]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # Export: the same tensors as HF's own, under HF's names
    back = fam.state_dict_to_hf(ours.state_dict(), cfg, hf_vocab_size=V)
    assert set(back) == set(hf_sd), set(back) ^ set(hf_sd)
    for k, v in hf_sd.items():
        assert torch.equal(back[k], v), k
    # and a model built from hf_config_from(cfg) with the exported (padded) weights agrees
    hf2 = transformers.AutoModelForCausalLM.from_config(fam.hf_config_from(cfg),
                                                        attn_implementation="eager").eval()
    hf2.load_state_dict(fam.state_dict_to_hf(ours.state_dict(), cfg), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(hf2(tokens).logits[..., :V], want, atol=1e-4, rtol=1e-4)


def test_config_mapping_picks_the_family_features():
    c = registry.config_from_hf(HF_CONFIGS["gpt2"]())
    assert (c.position_embedding_type, c.activation, c.normalization) == ("learned_absolute", "gelu_tanh", "LayerNorm")
    c = registry.config_from_hf(HF_CONFIGS["bloom"]())
    assert (c.position_embedding_type, c.embed_layernorm) == ("alibi", True)
    c = registry.config_from_hf(HF_CONFIGS["gpt_neox"]())
    assert (c.position_embedding_type, c.rotary_percent, c.rotary_base, c.parallel_attention_mlp) == \
        ("rope", 0.5, 500.0, True)
    c = registry.config_from_hf(HF_CONFIGS["llama"]())
    assert (c.glu_activation, c.normalization, c.add_bias_linear, c.ffn_size) == ("swiglu", "RMSNorm", False, 80)


def test_unsupported_hf_features_raise():
    gqa = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        registry.config_from_hf(gqa)
    with pytest.raises(ValueError, match="model_type 'opt'"):
        registry.config_from_hf(transformers.OPTConfig())
