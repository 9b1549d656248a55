"""HF model_type -> family module (config_from_hf, hf_config_from, state_dict_from_hf/_to_hf)."""
from __future__ import annotations

from types import ModuleType

from megatron.model.hf import bloom, gpt2, llama, neox

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "bloom": bloom, "gpt_neox": neox, "llama": llama}


def family(model_type: str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ValueError(f"HF model_type {model_type!r} is not supported; known: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def config_from_hf(hf_config):
    return family(hf_config.model_type).config_from_hf(hf_config)
