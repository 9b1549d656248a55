"""Our checkpoints (any TP/PP) <-> HF transformers directories, through megatron/model/hf.

    export_hf("ckpt", "hf_out")              # config.json, model.safetensors, tokenizer files
    import_hf("hf_dir", "ckpt_out", tp=2)    # mp_rank_XX_model_states.pt + config.json + latest

The HF family follows the architecture: rotary + SwiGLU + RMSNorm -> Llama, rotary -> GPT-NeoX,
ALiBi + embedding LayerNorm -> BLOOM, learned positions + GeLU + LayerNorm -> GPT-2; the
choice is checked by mapping the HF config back, and a model the family cannot express (e.g.
sandwich LayerNorm) is refused naming the fields. The padded vocabulary is kept (HF accepts a
vocab_size above the tokenizer's), so the HF model's logits equal ours; --hf-vocab-size cuts it.

Tokenizers written for HF: a SentencePiece model becomes a `tokenizers` BPE/Unigram built from
the .model's own settings (transformers' SpmConverter.build_tokenizer_from_spm_proto, legacy
prepend) saved as tokenizer.json for PreTrainedTokenizerFast / AutoTokenizer, plus the .model
copied as tokenizer.model. It encodes plain text exactly like SentencePiece; text containing a
special piece literally (e.g. "<eod>") is split as one special token by HF but as characters by
SentencePiece. HuggingFaceTokenizer directories are re-saved; GPT2BPETokenizer vocab/merges
become a GPT2TokenizerFast; ByteLevelTokenizer has no HF counterpart (no tokenizer written).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Optional

import torch

from megatron.config.schema import Config, DataConfig, ModelConfig
from megatron.eval import checkpoint_loader as ckl
from megatron.model.hf import registry

# Fields that decide the computation; an HF family must reproduce them.
ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_size", "vocab_size",
               "position_embedding_type", "glu_activation", "normalization", "layernorm_epsilon",
               "sandwich_layernorm", "embed_layernorm", "parallel_attention_mlp",
               "add_bias_linear", "untie_embeddings_and_output_weights")


def _arch(m: ModelConfig) -> dict:
    out = {f: getattr(m, f) for f in ARCH_FIELDS}
    if not m.glu_activation:
        out["activation"] = m.activation
    if m.position_embedding_type == "rope":
        out.update(rotary_percent=m.rotary_percent, rotary_base=m.rotary_base)
    if m.position_embedding_type == "learned_absolute":
        out["max_positions"] = m.max_positions
    return out


def family_for(m: ModelConfig) -> str:
    """HF model_type for our architecture; raises naming what no family can express."""
    pe = m.position_embedding_type
    if pe == "rope":
        model_type = "llama" if m.glu_activation == "swiglu" and m.normalization == "RMSNorm" \
            else "gpt_neox"
    elif pe == "alibi":
        model_type = "bloom"
    elif pe == "learned_absolute":
        model_type = "gpt2"
    else:
        raise ValueError(f"--position-embedding-type {pe}: no HF family (GPT-2: learned_absolute, "
                         f"BLOOM: alibi, GPT-NeoX/Llama: rope)")
    fam = registry.family(model_type)
    back = fam.config_from_hf(fam.hf_config_from(m))
    diff = {k: (v, _arch(back).get(k)) for k, v in _arch(m).items() if _arch(back).get(k) != v}
    if diff:
        raise ValueError(f"HF {model_type} cannot express this model: "
                         + "; ".join(f"{k}: ours {a!r}, {model_type} {b!r}" for k, (a, b) in diff.items()))
    return model_type


def export_hf(load_dir: str, out_dir: str, tag: Optional[str] = None, tokenizer=None,
              hf_vocab_size: Optional[int] = None, dtype: torch.dtype = torch.float32) -> str:
    """Write an HF model directory from a checkpoint; returns its model_type."""
    from transformers import AutoModelForCausalLM

    cfg, full = ckl.load_full_state_dict(load_dir, tag)
    model_type = family_for(cfg.model)
    fam = registry.family(model_type)
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the family defaults' token ids (set below) get warned about
    try:
        hf_cfg = fam.hf_config_from(cfg.model)
    finally:
        hf_logging.set_verbosity(level)
    if hf_vocab_size:
        if tokenizer is not None and hf_vocab_size < tokenizer.vocab_size:
            raise ValueError(f"--hf-vocab-size {hf_vocab_size} is below the tokenizer's "
                             f"{tokenizer.vocab_size}")
        hf_cfg.vocab_size = hf_vocab_size
    if tokenizer is not None:
        hf_cfg.eos_token_id = hf_cfg.bos_token_id = tokenizer.eod
        hf_cfg.pad_token_id = tokenizer.pad if tokenizer.pad >= 0 else None
    sd = fam.state_dict_to_hf(full, cfg.model, hf_vocab_size)
    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in sd and not _is_tied(model, k)]
    if missing or unexpected:
        raise RuntimeError(f"HF {model_type} weights do not match: missing {missing}, "
                           f"unexpected {unexpected}")
    os.makedirs(out_dir, exist_ok=True)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        save_hf_tokenizer(cfg.data, out_dir, eod=tokenizer.eod)
    return model_type


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)


def save_hf_tokenizer(data: DataConfig, out_dir: str, eod: Optional[int] = None) -> bool:
    """Write HF tokenizer files for our tokenizer; False when there is no HF equivalent."""
    kind = data.tokenizer_type
    if kind in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        tok = sentencepiece_to_hf(data.tokenizer_model)
        shutil.copyfile(data.tokenizer_model, os.path.join(out_dir, "tokenizer.model"))
    elif kind == "HuggingFaceTokenizer":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(data.tokenizer_name_or_path)
    elif kind == "GPT2BPETokenizer":
        from transformers import GPT2TokenizerFast
        tok = GPT2TokenizerFast(vocab_file=data.vocab_file, merges_file=data.merge_file)
    else:
        return False
    tok.save_pretrained(out_dir)
    return True


def sentencepiece_to_hf(model_file: str):
    """A PreTrainedTokenizerFast that encodes like SentencePiece (see the module docstring)."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type == 2:  # BPE: {piece: id}
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:  # Unigram: [(piece, score)]
        vocab = [(p.piece, p.score) for p in proto.pieces]
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise ValueError(f"--tokenizer-model {model_file}: SentencePiece model type "
                         f"{proto.trainer_spec.model_type} cannot be converted (BPE or Unigram only)")
    sp = spm.SentencePieceProcessor(model_file=model_file)
    piece = lambda i: sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None  # noqa: E731
    eod = sp.piece_to_id("<eod>") if sp.id_to_piece(sp.piece_to_id("<eod>")) == "<eod>" else sp.eos_id()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=piece(eod),
                                   bos_token=piece(sp.bos_id()), unk_token=piece(sp.unk_id()),
                                   pad_token=piece(sp.pad_id()))


def import_hf(hf_dir: str, save_dir: str, tp: int = 1, seq_length: Optional[int] = None,
              tag: str = "release") -> str:
    """Write one of our checkpoints (TP = tp, model weights only) from an HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(f"--hf-dir {hf_dir}: no config.json there")
    hf_cfg = AutoConfig.from_pretrained(hf_dir)
    fam = registry.family(hf_cfg.model_type)
    m = fam.config_from_hf(hf_cfg)
    if seq_length:
        m = dataclasses.replace(m, seq_length=seq_length,
                                max_position_embeddings=m.max_position_embeddings or m.seq_length)
    m = dataclasses.replace(m, vocab_size=-(-m.vocab_size // tp) * tp)  # split evenly over TP
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    full = {k: v.contiguous() for k, v in fam.state_dict_from_hf(hf_model.state_dict(), m).items()}
    full = ckl.with_extra_state(full, m)
    specs = ckl.partition_specs(m)
    ckl.check_shapes(full, specs, m, f"--hf-dir {hf_dir}")
    has_tokenizer = any(os.path.isfile(os.path.join(hf_dir, f))
                        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    data = DataConfig(tokenizer_type="HuggingFaceTokenizer",
                      tokenizer_name_or_path=os.path.abspath(hf_dir)) if has_tokenizer else DataConfig()
    cfg = Config(model=m, data=data)
    return ckl.save_model_checkpoint(save_dir, cfg, ckl.split_state_dict(full, specs, tp), tag)
