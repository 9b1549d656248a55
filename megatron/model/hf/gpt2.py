"""GPT-2: learned positions, gelu_tanh ("gelu_new"), LayerNorm, tied head, Conv1D (in, out) weights."""
from __future__ import annotations

import torch

from megatron.config.schema import ModelConfig
from megatron.model.hf.common import norm, pad_vocab, qkv_from_separate, qkv_to_separate, weights_only

ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_from_hf(hf) -> ModelConfig:
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("GPT-2 scale_attn_by_inverse_layer_idx=True is not supported")
    if not getattr(hf, "scale_attn_weights", True):
        raise ValueError("GPT-2 scale_attn_weights=False is not supported")
    if hf.activation_function not in ACT_FROM_HF:
        raise ValueError(f"GPT-2 activation_function {hf.activation_function!r} is not supported")
    return ModelConfig(
        num_layers=hf.n_layer, hidden_size=hf.n_embd, num_attention_heads=hf.n_head,
        ffn_hidden_size=hf.n_inner, seq_length=hf.n_positions, max_position_embeddings=hf.n_positions,
        vocab_size=hf.vocab_size, position_embedding_type="learned_absolute",
        activation=ACT_FROM_HF[hf.activation_function], normalization="LayerNorm",
        layernorm_epsilon=hf.layer_norm_epsilon, add_bias_linear=True,
        untie_embeddings_and_output_weights=not getattr(hf, "tie_word_embeddings", True),
        init_method_std=hf.initializer_range, hidden_dropout=hf.resid_pdrop,
        attention_dropout=hf.attn_pdrop)


def hf_config_from(cfg: ModelConfig):
    from transformers import GPT2Config
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[cfg.activation]
    return GPT2Config(n_layer=cfg.num_layers, n_embd=cfg.hidden_size, n_head=cfg.num_attention_heads,
                      n_inner=cfg.ffn_size, n_positions=cfg.max_positions, vocab_size=cfg.vocab_size,
                      activation_function=act, layer_norm_epsilon=cfg.layernorm_epsilon,
                      initializer_range=cfg.init_method_std, resid_pdrop=cfg.hidden_dropout,
                      embd_pdrop=cfg.hidden_dropout, attn_pdrop=cfg.attention_dropout,
                      tie_word_embeddings=not cfg.untie_embeddings_and_output_weights)


def state_dict_from_hf(sd: dict, cfg: ModelConfig) -> dict:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    nh, H = cfg.num_attention_heads, cfg.hidden_size
    out = {"embedding.word_embeddings.weight": pad_vocab(sd["wte.weight"], cfg.vocab_size),
           "embedding.position_embeddings.weight": sd["wpe.weight"]}
    for i in range(cfg.num_layers):
        s, d = f"h.{i}", f"layers.{i}"
        norm(sd, f"{s}.ln_1", f"{d}.input_norm", out)
        w = sd[f"{s}.attn.c_attn.weight"].t()  # Conv1D (in, out) -> (out, in); rows [q; k; v]
        out[f"{d}.attention.qkv.weight"] = qkv_from_separate(*w.split(H), nh)
        out[f"{d}.attention.qkv.bias"] = qkv_from_separate(*sd[f"{s}.attn.c_attn.bias"].split(H), nh)
        out[f"{d}.attention.dense.weight"] = sd[f"{s}.attn.c_proj.weight"].t()
        out[f"{d}.attention.dense.bias"] = sd[f"{s}.attn.c_proj.bias"]
        norm(sd, f"{s}.ln_2", f"{d}.pre_mlp_norm", out)
        out[f"{d}.mlp.fc1.weight"] = sd[f"{s}.mlp.c_fc.weight"].t()
        out[f"{d}.mlp.fc1.bias"] = sd[f"{s}.mlp.c_fc.bias"]
        out[f"{d}.mlp.fc2.weight"] = sd[f"{s}.mlp.c_proj.weight"].t()
        out[f"{d}.mlp.fc2.bias"] = sd[f"{s}.mlp.c_proj.bias"]
    norm(sd, "ln_f", "head.final_norm", out)
    if cfg.untie_embeddings_and_output_weights:
        out["head.output_layer.weight"] = pad_vocab(sd["lm_head.weight"], cfg.vocab_size)
    return {k: v.contiguous() for k, v in out.items()}


def state_dict_to_hf(sd: dict, cfg: ModelConfig, hf_vocab_size: int | None = None) -> dict:
    sd = weights_only(sd)
    V = hf_vocab_size or cfg.vocab_size
    nh = cfg.num_attention_heads
    t = "transformer."
    out = {t + "wte.weight": sd["embedding.word_embeddings.weight"][:V],
           t + "wpe.weight": sd["embedding.position_embeddings.weight"]}
    for i in range(cfg.num_layers):
        s, d = f"{t}h.{i}", f"layers.{i}"
        norm(sd, f"{d}.input_norm", f"{s}.ln_1", out)
        out[f"{s}.attn.c_attn.weight"] = torch.cat(qkv_to_separate(sd[f"{d}.attention.qkv.weight"], nh)).t()
        out[f"{s}.attn.c_attn.bias"] = torch.cat(qkv_to_separate(sd[f"{d}.attention.qkv.bias"], nh))
        out[f"{s}.attn.c_proj.weight"] = sd[f"{d}.attention.dense.weight"].t()
        out[f"{s}.attn.c_proj.bias"] = sd[f"{d}.attention.dense.bias"]
        norm(sd, f"{d}.pre_mlp_norm", f"{s}.ln_2", out)
        out[f"{s}.mlp.c_fc.weight"] = sd[f"{d}.mlp.fc1.weight"].t()
        out[f"{s}.mlp.c_fc.bias"] = sd[f"{d}.mlp.fc1.bias"]
        out[f"{s}.mlp.c_proj.weight"] = sd[f"{d}.mlp.fc2.weight"].t()
        out[f"{s}.mlp.c_proj.bias"] = sd[f"{d}.mlp.fc2.bias"]
    norm(sd, "head.final_norm", t + "ln_f", out)
    head = "head.output_layer.weight" if cfg.untie_embeddings_and_output_weights \
        else "embedding.word_embeddings.weight"
    out["lm_head.weight"] = sd[head][:V]
    return {k: v.contiguous() for k, v in out.items()}
