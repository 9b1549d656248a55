"""Command-line flags (Megatron-DeepSpeed / Megatron-LM names) -> `Config`.

Every flag maps to one field of one config group. Flags whose feature has not landed yet are
parsed (so existing sbatch argument lists are recognised) but rejected by `validate.py` with
"not implemented yet" when set: never silently ignored.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from typing import Optional, Sequence

from megatron.config.flags_model import add_data_flags, add_model_flags, add_parallel_flags
from megatron.config.flags_run import add_checkpoint_flags, add_logging_flags, \
    add_optimizer_flags, add_training_flags
from megatron.config.schema import Config

# dest -> config group; filled by _Flags.add
_GROUP_OF: dict[str, str] = {}
# dest -> flag, for flags accepted only so that Megatron-DeepSpeed argument lists parse: they
# change nothing here, and start-up warns about each one given (validate.no_effect_warning).
# Their defaults are None/False, so a value other than that means the user set it.
NO_EFFECT_FLAGS: dict[str, str] = {}

POSITION_EMBEDDING_ALIASES = {"absolute": "learned_absolute", "learned": "learned_absolute",
                              "rotary": "rope"}
TOKENIZER_TYPE_ALIASES = {"PretrainedFromHF": "HuggingFaceTokenizer"}  # Megatron-DeepSpeed's


class _Flags:
    """argparse group that records which config group each flag belongs to."""

    def __init__(self, parser: argparse.ArgumentParser, title: str, group: str):
        self._arg_group = parser.add_argument_group(title)
        self._group = group

    def add(self, *names, no_effect: bool = False, **kwargs):
        action = self._arg_group.add_argument(*names, **kwargs)
        _GROUP_OF[action.dest] = self._group
        if no_effect:
            assert action.default in (None, False), action.dest
            NO_EFFECT_FLAGS[action.dest] = action.option_strings[0]
        return action


class _SuggestingParser(argparse.ArgumentParser):
    """Rejects unknown flags, naming the closest known one."""

    def parse_args(self, args=None, namespace=None):
        ns, unknown = self.parse_known_args(args, namespace)
        if getattr(ns, "swiglu", False) and ns.glu_activation not in (None, "swiglu"):
            self.error(f"--swiglu contradicts --glu-activation {ns.glu_activation}: give one")
        flags = [u for u in unknown if u.startswith("-")]
        if unknown:
            known = [o for a in self._actions for o in a.option_strings]
            msgs = []
            for u in flags or unknown:
                name = u.split("=", 1)[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                msgs.append(f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close
                                                      else ""))
            self.error("; ".join(msgs))
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = _SuggestingParser(
        prog="pretrain_gpt.py",
        description="Pretrain a GPT with tensor, pipeline and data parallelism (DeepSpeed engine). "
                    "Flags keep Megatron-DeepSpeed's names.",
        allow_abbrev=False)

    add_model_flags(_Flags(p, "model", "model"))
    add_parallel_flags(_Flags(p, "parallelism", "parallel"))
    add_data_flags(_Flags(p, "data", "data"))
    add_optimizer_flags(_Flags(p, "optimizer", "optimizer"))
    add_training_flags(_Flags(p, "training", "training"))
    add_checkpoint_flags(_Flags(p, "checkpointing", "checkpoint"))
    add_logging_flags(_Flags(p, "logging", "logging"))
    return p


def megatron_lm_swiglu_ffn_size(hidden_size: int) -> int:
    """Megatron-LM's default FFN size for --swiglu (NVIDIA/Megatron-LM,
    megatron/training/arguments.py: `args.ffn_hidden_size = int((4 * args.hidden_size * 2 / 3)
    / 64) * 64`): 8/3 h rounded down to a multiple of 64."""
    return int((4 * hidden_size * 2 / 3) / 64) * 64


def config_from_args(ns: argparse.Namespace) -> Config:
    groups: dict[str, dict] = {}
    for dest, value in vars(ns).items():
        if dest not in _GROUP_OF:
            continue
        if isinstance(value, list):
            value = tuple(value)
        groups.setdefault(_GROUP_OF[dest], {})[dest] = value
    model = groups["model"]
    if model.pop("swiglu"):  # Megatron-LM's flag and its FFN size (--ffn-hidden-size wins)
        model["glu_activation"] = "swiglu"
        if model["ffn_hidden_size"] is None:
            model["ffn_hidden_size"] = megatron_lm_swiglu_ffn_size(model["hidden_size"])
    groups["model"]["position_embedding_type"] = POSITION_EMBEDDING_ALIASES.get(
        groups["model"]["position_embedding_type"], groups["model"]["position_embedding_type"])
    tok = groups["data"]["tokenizer_type"]
    groups["data"]["tokenizer_type"] = TOKENIZER_TYPE_ALIASES.get(tok, tok)
    return Config().replace(**groups)


def parse_config(argv: Optional[Sequence[str]] = None) -> Config:
    parser = build_parser()
    return config_from_args(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
