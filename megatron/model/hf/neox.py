"""GPT-NeoX: partial rotary, parallel residual (two LayerNorms), exact gelu, untied head.
Its fused QKV is already per head (nh, 3, hs)."""
from __future__ import annotations

from megatron.config.schema import ModelConfig
from megatron.model.hf.common import norm, pad_vocab, rope_settings, weights_only

LAYER_MAP = [
    ("input_layernorm", "input_norm"),
    ("attention.query_key_value", "attention.qkv"),
    ("attention.dense", "attention.dense"),
    ("post_attention_layernorm", "pre_mlp_norm"),
    ("mlp.dense_h_to_4h", "mlp.fc1"),
    ("mlp.dense_4h_to_h", "mlp.fc2"),
]
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def config_from_hf(hf) -> ModelConfig:
    if hf.hidden_act not in ACT_FROM_HF:
        raise ValueError(f"GPT-NeoX hidden_act {hf.hidden_act!r} is not supported")
    if not getattr(hf, "attention_bias", True):
        raise ValueError("GPT-NeoX attention_bias=False is not supported (MLP biases stay)")
    theta, fraction = rope_settings(hf, default_fraction=0.25)
    return ModelConfig(
        num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size,
        num_attention_heads=hf.num_attention_heads, ffn_hidden_size=hf.intermediate_size,
        seq_length=hf.max_position_embeddings, max_position_embeddings=hf.max_position_embeddings,
        vocab_size=hf.vocab_size, position_embedding_type="rope", rotary_percent=fraction,
        rotary_base=theta, activation=ACT_FROM_HF[hf.hidden_act], normalization="LayerNorm",
        layernorm_epsilon=hf.layer_norm_eps, parallel_attention_mlp=hf.use_parallel_residual,
        add_bias_linear=True,
        untie_embeddings_and_output_weights=not getattr(hf, "tie_word_embeddings", False),
        init_method_std=hf.initializer_range, hidden_dropout=hf.hidden_dropout,
        attention_dropout=hf.attention_dropout)


def hf_config_from(cfg: ModelConfig):
    from transformers import GPTNeoXConfig
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[cfg.activation]
    return GPTNeoXConfig(
        num_hidden_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_size,
        max_position_embeddings=cfg.max_positions, vocab_size=cfg.vocab_size, hidden_act=act,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rotary_base,
                         "partial_rotary_factor": cfg.rotary_percent},
        layer_norm_eps=cfg.layernorm_epsilon, use_parallel_residual=cfg.parallel_attention_mlp,
        tie_word_embeddings=not cfg.untie_embeddings_and_output_weights,
        initializer_range=cfg.init_method_std, hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout)


def state_dict_from_hf(sd: dict, cfg: ModelConfig) -> dict:
    out = {"embedding.word_embeddings.weight": pad_vocab(sd["gpt_neox.embed_in.weight"], cfg.vocab_size)}
    for i in range(cfg.num_layers):
        for theirs, ours in LAYER_MAP:
            norm(sd, f"gpt_neox.layers.{i}.{theirs}", f"layers.{i}.{ours}", out)
    norm(sd, "gpt_neox.final_layer_norm", "head.final_norm", out)
    if cfg.untie_embeddings_and_output_weights:
        out["head.output_layer.weight"] = pad_vocab(sd["embed_out.weight" if "embed_out.weight" in sd
                                                       else "lm_head.weight"], cfg.vocab_size)
    return out


def state_dict_to_hf(sd: dict, cfg: ModelConfig, hf_vocab_size: int | None = None) -> dict:
    sd = weights_only(sd)
    V = hf_vocab_size or cfg.vocab_size
    out = {"gpt_neox.embed_in.weight": sd["embedding.word_embeddings.weight"][:V]}
    for i in range(cfg.num_layers):
        for theirs, ours in LAYER_MAP:
            norm(sd, f"layers.{i}.{ours}", f"gpt_neox.layers.{i}.{theirs}", out)
    norm(sd, "head.final_norm", "gpt_neox.final_layer_norm", out)
    head = "head.output_layer.weight" if cfg.untie_embeddings_and_output_weights \
        else "embedding.word_embeddings.weight"
    out["lm_head.weight"] = sd[head][:V]
    return out
