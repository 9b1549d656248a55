"""BLOOM: ALiBi, embedding LayerNorm, gelu_tanh, tied head; fused QKV already per head (nh, 3, hs)."""
from __future__ import annotations

from megatron.config.schema import ModelConfig
from megatron.model.hf.common import norm, pad_vocab, weights_only

LAYER_MAP = [  # (BLOOM name, our name) inside a layer; weights and biases map one to one
    ("input_layernorm", "input_norm"),
    ("self_attention.query_key_value", "attention.qkv"),
    ("self_attention.dense", "attention.dense"),
    ("post_attention_layernorm", "pre_mlp_norm"),
    ("mlp.dense_h_to_4h", "mlp.fc1"),
    ("mlp.dense_4h_to_h", "mlp.fc2"),
]


def config_from_hf(hf, seq_length: int = 2048) -> ModelConfig:
    if hf.apply_residual_connection_post_layernorm:
        raise ValueError("BLOOM apply_residual_connection_post_layernorm=True is not supported")
    return ModelConfig(
        num_layers=hf.n_layer, hidden_size=hf.hidden_size, num_attention_heads=hf.n_head,
        seq_length=seq_length, vocab_size=hf.vocab_size, position_embedding_type="alibi",
        activation="gelu_tanh", normalization="LayerNorm", layernorm_epsilon=hf.layer_norm_epsilon,
        embed_layernorm=True, add_bias_linear=True,
        untie_embeddings_and_output_weights=not getattr(hf, "tie_word_embeddings", True),
        init_method_std=hf.initializer_range, hidden_dropout=hf.hidden_dropout,
        attention_dropout=hf.attention_dropout, attention_softmax_in_fp32=True)


def hf_config_from(cfg: ModelConfig):
    from transformers import BloomConfig
    return BloomConfig(n_layer=cfg.num_layers, hidden_size=cfg.hidden_size,
                       n_head=cfg.num_attention_heads, vocab_size=cfg.vocab_size,
                       layer_norm_epsilon=cfg.layernorm_epsilon, initializer_range=cfg.init_method_std,
                       hidden_dropout=cfg.hidden_dropout, attention_dropout=cfg.attention_dropout,
                       tie_word_embeddings=not cfg.untie_embeddings_and_output_weights)


def state_dict_from_hf(sd: dict, cfg: ModelConfig) -> dict:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"embedding.word_embeddings.weight": pad_vocab(sd["word_embeddings.weight"], cfg.vocab_size)}
    norm(sd, "word_embeddings_layernorm", "embedding.norm", out)
    for i in range(cfg.num_layers):
        for theirs, ours in LAYER_MAP:
            norm(sd, f"h.{i}.{theirs}", f"layers.{i}.{ours}", out)
    norm(sd, "ln_f", "head.final_norm", out)
    if cfg.untie_embeddings_and_output_weights:
        out["head.output_layer.weight"] = pad_vocab(sd["lm_head.weight"], cfg.vocab_size)
    return out


def state_dict_to_hf(sd: dict, cfg: ModelConfig, hf_vocab_size: int | None = None) -> dict:
    sd = weights_only(sd)
    V = hf_vocab_size or cfg.vocab_size
    t = "transformer."
    out = {t + "word_embeddings.weight": sd["embedding.word_embeddings.weight"][:V]}
    norm(sd, "embedding.norm", t + "word_embeddings_layernorm", out)
    for i in range(cfg.num_layers):
        for theirs, ours in LAYER_MAP:
            norm(sd, f"layers.{i}.{ours}", f"{t}h.{i}.{theirs}", out)
    norm(sd, "head.final_norm", t + "ln_f", out)
    head = "head.output_layer.weight" if cfg.untie_embeddings_and_output_weights \
        else "embedding.word_embeddings.weight"
    out["lm_head.weight"] = sd[head][:V]
    return out
