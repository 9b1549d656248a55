"""Llama: full rotary, SwiGLU (gate_proj, up_proj), RMSNorm, no biases; separate q/k/v projections."""
from __future__ import annotations

import torch

from megatron.config.schema import ModelConfig
from megatron.model.hf.common import pad_vocab, qkv_from_separate, qkv_to_separate, rope_settings, weights_only


def config_from_hf(hf) -> ModelConfig:
    heads = hf.num_attention_heads
    if getattr(hf, "num_key_value_heads", heads) != heads:
        raise ValueError(f"Llama num_key_value_heads {hf.num_key_value_heads} != num_attention_heads "
                         f"{heads}: grouped-query attention is not supported (ModelConfig has no "
                         f"num_query_groups)")
    if getattr(hf, "head_dim", None) not in (None, hf.hidden_size // heads):
        raise ValueError(f"Llama head_dim {hf.head_dim} != hidden_size / num_attention_heads")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("Llama attention_bias / mlp_bias = True is not supported")
    if hf.hidden_act != "silu":
        raise ValueError(f"Llama hidden_act {hf.hidden_act!r} is not supported (silu -> swiglu)")
    theta, fraction = rope_settings(hf)
    return ModelConfig(
        num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size, num_attention_heads=heads,
        ffn_hidden_size=hf.intermediate_size, seq_length=hf.max_position_embeddings,
        max_position_embeddings=hf.max_position_embeddings, vocab_size=hf.vocab_size,
        position_embedding_type="rope", rotary_percent=fraction, rotary_base=theta,
        glu_activation="swiglu", normalization="RMSNorm", layernorm_epsilon=hf.rms_norm_eps,
        add_bias_linear=False,
        untie_embeddings_and_output_weights=not getattr(hf, "tie_word_embeddings", False),
        init_method_std=hf.initializer_range, hidden_dropout=0.0,
        attention_dropout=getattr(hf, "attention_dropout", 0.0))


def hf_config_from(cfg: ModelConfig):
    from transformers import LlamaConfig
    return LlamaConfig(
        num_hidden_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        intermediate_size=cfg.ffn_size, max_position_embeddings=cfg.max_positions,
        vocab_size=cfg.vocab_size, rms_norm_eps=cfg.layernorm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rotary_base},
        tie_word_embeddings=not cfg.untie_embeddings_and_output_weights,
        initializer_range=cfg.init_method_std, attention_dropout=cfg.attention_dropout)


def state_dict_from_hf(sd: dict, cfg: ModelConfig) -> dict:
    nh = cfg.num_attention_heads
    out = {"embedding.word_embeddings.weight": pad_vocab(sd["model.embed_tokens.weight"], cfg.vocab_size)}
    for i in range(cfg.num_layers):
        s, d = f"model.layers.{i}", f"layers.{i}"
        out[f"{d}.input_norm.weight"] = sd[f"{s}.input_layernorm.weight"]
        out[f"{d}.attention.qkv.weight"] = qkv_from_separate(
            *(sd[f"{s}.self_attn.{p}_proj.weight"] for p in "qkv"), nh)
        out[f"{d}.attention.dense.weight"] = sd[f"{s}.self_attn.o_proj.weight"]
        out[f"{d}.pre_mlp_norm.weight"] = sd[f"{s}.post_attention_layernorm.weight"]
        out[f"{d}.mlp.fc1.weight"] = torch.cat([sd[f"{s}.mlp.gate_proj.weight"],  # [gate | up]
                                                sd[f"{s}.mlp.up_proj.weight"]])
        out[f"{d}.mlp.fc2.weight"] = sd[f"{s}.mlp.down_proj.weight"]
    out["head.final_norm.weight"] = sd["model.norm.weight"]
    if cfg.untie_embeddings_and_output_weights:
        out["head.output_layer.weight"] = pad_vocab(sd["lm_head.weight"], cfg.vocab_size)
    return out


def state_dict_to_hf(sd: dict, cfg: ModelConfig, hf_vocab_size: int | None = None) -> dict:
    sd = weights_only(sd)
    V = hf_vocab_size or cfg.vocab_size
    nh = cfg.num_attention_heads
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:V]}
    for i in range(cfg.num_layers):
        s, d = f"model.layers.{i}", f"layers.{i}"
        out[f"{s}.input_layernorm.weight"] = sd[f"{d}.input_norm.weight"]
        q, k, v = qkv_to_separate(sd[f"{d}.attention.qkv.weight"], nh)
        out.update({f"{s}.self_attn.q_proj.weight": q, f"{s}.self_attn.k_proj.weight": k,
                    f"{s}.self_attn.v_proj.weight": v})
        out[f"{s}.self_attn.o_proj.weight"] = sd[f"{d}.attention.dense.weight"]
        out[f"{s}.post_attention_layernorm.weight"] = sd[f"{d}.pre_mlp_norm.weight"]
        gate, up = sd[f"{d}.mlp.fc1.weight"].chunk(2)
        out[f"{s}.mlp.gate_proj.weight"], out[f"{s}.mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
        out[f"{s}.mlp.down_proj.weight"] = sd[f"{d}.mlp.fc2.weight"]
    out["model.norm.weight"] = sd["head.final_norm.weight"]
    head = "head.output_layer.weight" if cfg.untie_embeddings_and_output_weights \
        else "embedding.word_embeddings.weight"
    out["lm_head.weight"] = sd[head][:V]
    return out
