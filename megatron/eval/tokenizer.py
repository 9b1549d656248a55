"""The tokenizer a checkpoint was trained with (from its config.json), with paths overridable."""
from __future__ import annotations

from typing import Optional

from megatron.config.schema import Config
from megatron.data.tokenizers import build_tokenizer


def tokenizer_for(cfg: Config, tokenizer_type: Optional[str] = None,
                  tokenizer_model: Optional[str] = None,
                  tokenizer_name_or_path: Optional[str] = None,
                  vocab_file: Optional[str] = None, merge_file: Optional[str] = None):
    """Flags given here win over the checkpoint's (e.g. when the .model file has moved)."""
    d = cfg.data
    kind = tokenizer_type or d.tokenizer_type
    if not kind:
        raise ValueError("the checkpoint's config.json names no tokenizer: pass --tokenizer-type "
                         "and its files")
    tok = build_tokenizer(kind, tokenizer_model=tokenizer_model or d.tokenizer_model,
                          tokenizer_name_or_path=tokenizer_name_or_path or d.tokenizer_name_or_path,
                          vocab_file=vocab_file or d.vocab_file, merge_file=merge_file or d.merge_file)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer {tok!r} has {tok.vocab_size} tokens, more than the "
                         f"checkpoint's padded vocabulary {cfg.model.vocab_size}: wrong tokenizer?")
    return tok


def add_tokenizer_flags(parser) -> None:
    """--tokenizer-type/-model/-name-or-path, --vocab-file, --merge-file (default: the checkpoint's)."""
    g = parser.add_argument_group("tokenizer (default: as recorded in the checkpoint)")
    for flag in ("--tokenizer-type", "--tokenizer-model", "--tokenizer-name-or-path",
                 "--vocab-file", "--merge-file"):
        g.add_argument(flag, default=None)


def tokenizer_from_args(cfg: Config, args):
    return tokenizer_for(cfg, args.tokenizer_type, args.tokenizer_model,
                         args.tokenizer_name_or_path, args.vocab_file, args.merge_file)
