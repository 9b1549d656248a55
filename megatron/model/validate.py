"""Start-up checks of a ModelConfig against the TP size; errors name the flags and values."""
from __future__ import annotations

from megatron.model.kernels import KERNELS, SDPA_BACKENDS
from megatron.model.mlp import ACTIVATIONS, GLU_ACTIVATIONS
from megatron.model.quack_mlp import QUACK_ACTIVATIONS

MLP_KERNELS = ("torch", "quack")

POSITION_TYPES = ("learned_absolute", "sinusoidal", "rope", "alibi", "none")
NORMS = ("LayerNorm", "RMSNorm")


def check_model_config(cfg, tp_size: int = 1) -> None:
    errors = []
    pe = cfg.position_embedding_type
    if pe not in POSITION_TYPES:
        errors.append(f"--position-embedding-type {pe!r} is unknown; choose one of {POSITION_TYPES}")
    if pe == "alibi" and cfg.rotary_percent != 1.0:
        errors.append(f"--position-embedding-type alibi does not use rotary embeddings, but "
                      f"--rotary-percent is set to {cfg.rotary_percent}")
    if not 0.0 < cfg.rotary_percent <= 1.0:
        errors.append(f"--rotary-percent {cfg.rotary_percent} must be in (0, 1]")
    if cfg.glu_activation is not None and cfg.glu_activation not in GLU_ACTIVATIONS:
        errors.append(f"--glu-activation {cfg.glu_activation!r} is unknown; choose one of "
                      f"{tuple(GLU_ACTIVATIONS)}")
    if cfg.activation not in ACTIVATIONS:
        errors.append(f"--activation {cfg.activation!r} is unknown; choose one of {tuple(ACTIVATIONS)}")
    if cfg.normalization not in NORMS:
        errors.append(f"--normalization {cfg.normalization!r} is unknown; choose one of {NORMS}")
    if cfg.attention_kernel not in KERNELS:
        errors.append(f"--attention-kernel {cfg.attention_kernel!r} is unknown; choose one of {KERNELS}")
    if cfg.sdpa_backend not in SDPA_BACKENDS:
        errors.append(f"--sdpa-backend {cfg.sdpa_backend!r} is unknown; choose one of {SDPA_BACKENDS}")
    if cfg.attention_kernel == "flex" and cfg.attention_dropout > 0:
        errors.append(f"--attention-kernel flex does not implement attention dropout, but "
                      f"--attention-dropout is {cfg.attention_dropout}; use sdpa/eager or set it to 0")
    if cfg.attention_kernel == "fa4":
        errors += _fa4_errors(cfg)
    if cfg.mlp_kernel not in MLP_KERNELS:
        errors.append(f"--mlp-kernel {cfg.mlp_kernel!r} is unknown; choose one of {MLP_KERNELS}")
    elif cfg.mlp_kernel == "quack":
        if cfg.glu_activation is not None:
            errors.append(f"--mlp-kernel quack runs gelu and --openai-gelu MLPs, not "
                          f"--glu-activation {cfg.glu_activation}; use --mlp-kernel torch")
        elif cfg.activation not in QUACK_ACTIVATIONS:
            errors.append(f"--mlp-kernel quack has no {cfg.activation!r} activation; it runs "
                          f"{tuple(QUACK_ACTIVATIONS)}")
        if tp_size > 1:
            errors.append(f"--mlp-kernel quack runs at --tensor-model-parallel-size 1, not "
                          f"{tp_size}; use --mlp-kernel torch")
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    if heads < 1 or hidden % heads:
        errors.append(f"--hidden-size {hidden} is not divisible by --num-attention-heads {heads}")
    elif pe == "rope" and 0.0 < cfg.rotary_percent <= 1.0:
        rot = int(cfg.head_dim * cfg.rotary_percent)
        if rot < 2 or rot % 2:
            errors.append(f"--rotary-percent {cfg.rotary_percent} x head dim {cfg.head_dim} "
                          f"(--hidden-size {hidden} / --num-attention-heads {heads}) gives {rot} "
                          f"rotary dims; it must be even and at least 2")
    if tp_size < 1 or heads % tp_size:
        errors.append(f"--num-attention-heads {heads} is not divisible by "
                      f"--tensor-model-parallel-size {tp_size}")
    if tp_size >= 1 and cfg.ffn_size % tp_size:
        errors.append(f"FFN size {cfg.ffn_size} (--ffn-hidden-size {cfg.ffn_hidden_size}) is not "
                      f"divisible by --tensor-model-parallel-size {tp_size}")
    if cfg.vocab_size <= 0 or (tp_size >= 1 and cfg.vocab_size % tp_size):
        errors.append(f"padded vocab size {cfg.vocab_size} must be positive and divisible by "
                      f"--tensor-model-parallel-size {tp_size}")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            errors.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be in [0, 1)")
    if errors:
        raise ValueError("invalid model config: " + "; ".join(errors))


def _fa4_errors(cfg) -> list:
    """What --attention-kernel fa4 (FlashAttention-4's causal kernels) cannot run."""
    errors = []
    if cfg.position_embedding_type == "alibi":
        errors.append("--attention-kernel fa4 has no ALiBi bias; use --attention-kernel auto "
                      "(FlexAttention) with --position-embedding-type alibi")
    if cfg.prefix_lm:
        errors.append("--attention-kernel fa4 runs plain causal masks, not --prefix-lm; use "
                      "--attention-kernel auto")
    if cfg.attention_dropout > 0:
        errors.append(f"--attention-kernel fa4 has no attention dropout, but --attention-dropout "
                      f"is {cfg.attention_dropout}; set it to 0 or use sdpa")
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    if heads >= 1 and hidden % heads == 0 and not (8 <= cfg.head_dim <= 256
                                                   and cfg.head_dim % 8 == 0):
        errors.append(f"--attention-kernel fa4 needs a head dim that is a multiple of 8 in "
                      f"[8, 256]; --hidden-size {hidden} / --num-attention-heads {heads} gives "
                      f"{cfg.head_dim}")
    return errors
