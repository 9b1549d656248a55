"""One pipeline stage of a checkpoint's GPT for inference: this rank's share of the weights only.

    plan = StagePlan.of(cfg.model, layout)            # which blocks this rank holds
    stage, cfg = load_stage("ckpt", layout)           # that stage with the checkpoint's weights
    out = stage(x, position_ids)   # stage 0: tokens (B, T) int64; later stages: hidden (B, T, H)
                                   # -> hidden (B, T, H), or on the last stage vocab-parallel
                                   #    logits (B, T, V / TP)

Stage s of P holds layers [start, stop) of a uniform split (contiguous, the first
num_layers % P stages one layer more), stage 0 also the Embedding, stage P-1 the OutputHead and,
when the embeddings are tied, its own copy of the word-embedding shard (V / TP, H) for the head.
With P = 1 the one stage is the whole GPTModel and computes exactly its forward. The blocks are
megatron/model's classes (Embedding, TransformerLayer, OutputHead) built without drawing init
weights (megatron-core's perform_initialization off; the default generator untouched) and
filled from the checkpoint: GPTModel names, layers renumbered to the stage's local indices
(`layers.5.x` is `layers.1.x` on a stage starting at layer 4). Only this stage's tensors are
read from the checkpoint files (memory-mapped).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from megatron.core import ModelParallelConfig, parallel_state
from torch import nn

from megatron.config.schema import Config, ModelConfig
from megatron.eval import checkpoint_loader as ckl
from megatron.model.embedding import Embedding
from megatron.model.head import OutputHead
from megatron.model.layer import TransformerLayer, shared_layer_inputs
from megatron.model.rng import DropoutRNG
from megatron.model.validate import check_model_config
from megatron.parallel.layout import ParallelLayout

TIED_WEIGHT = "word_embedding_weight"  # the last stage's copy of the tied word embedding
_WORD_EMBEDDING = "embedding.word_embeddings.weight"


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Global layer indices of `stage`: contiguous, sizes differing by at most one."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


@dataclasses.dataclass(frozen=True)
class StagePlan:
    num_layers: int
    pp: int
    stage: int
    tied: bool  # output head uses the word embedding

    @classmethod
    def of(cls, model_cfg: ModelConfig, layout: ParallelLayout) -> "StagePlan":
        return cls(model_cfg.num_layers, layout.pp, layout.pp_rank,
                   not model_cfg.untie_embeddings_and_output_weights)

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    @property
    def layers(self) -> range:
        return stage_layers(self.num_layers, self.pp, self.stage)

    @property
    def holds_tied_copy(self) -> bool:
        return self.tied and self.last and not self.first

    def stage_name(self, name: str) -> Optional[str]:
        """A GPTModel state-dict name -> this stage's name for it; None if not held here."""
        if name.startswith("embedding."):
            if self.first:
                return name
            return TIED_WEIGHT if self.holds_tied_copy and name == _WORD_EMBEDDING else None
        if name.startswith("head."):
            return name if self.last else None
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            layers = self.layers
            return f"layers.{int(index) - layers.start}.{rest}" if int(index) in layers else None
        return None


class PipelineStage(nn.Module):
    """[Embedding] -> TransformerLayer x len(plan.layers) -> [OutputHead], for eval only.

    Build after initialize_parallel (megatron-core's TP group); weights are uninitialised until
    load_state_dict (stage names, see StagePlan.stage_name)."""

    def __init__(self, cfg: ModelConfig, plan: StagePlan, dtype: torch.dtype = torch.float32):
        super().__init__()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        check_model_config(cfg, tp)
        self.plan = plan
        mp_config = ModelParallelConfig(tensor_model_parallel_size=tp, params_dtype=dtype,
                                        use_cpu_initialization=True, perform_initialization=False)
        rng = DropoutRNG(torch.initial_seed(), parallel_state.get_tensor_model_parallel_rank())
        with torch.random.fork_rng(devices=[]):  # position embeddings still draw: keep our state
            self.embedding = Embedding(cfg, mp_config, rng, dtype) if plan.first else None
            self.layers = nn.ModuleList(TransformerLayer(cfg, i + 1, mp_config, rng, dtype)
                                        for i in plan.layers)  # 1-based global layer numbers
            self.head = OutputHead(cfg, mp_config, dtype) if plan.last else None
        if plan.holds_tied_copy:
            self.word_embedding_weight = nn.Parameter(
                torch.empty(cfg.vocab_size // tp, cfg.hidden_size, dtype=dtype),
                requires_grad=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x: tokens (B, T) on the first stage, else hidden (B, T, H); position_ids (B, T).
        Returns hidden (B, T, H), or vocab-parallel logits (B, T, V / TP) on the last stage."""
        h = self.embedding(x, position_ids) if self.embedding is not None else x
        block_mask, rotary = shared_layer_inputs(self.layers[0], h.shape[1], position_ids, None,
                                                 None, h.dtype) if self.layers else (None, None)
        for layer in self.layers:
            h = layer(h, position_ids, None, None, block_mask, rotary)
        if self.head is None:
            return h
        if not self.head.tied:
            return self.head(h)
        return self.head(h, self.embedding.weight if self.embedding is not None
                         else self.word_embedding_weight)


def read_stage_state_dict(load_dir: str, tag: str, model_cfg: ModelConfig, layout: ParallelLayout,
                          plan: StagePlan) -> dict:
    """This rank's tensors (its TP shard of its stage) under stage names, from a checkpoint of
    any TP/PP: read shard by shard at the same TP size, else merged and re-split."""
    def keep(name):
        return plan.stage_name(name) is not None
    specs = {k: v for k, v in ckl.partition_specs(model_cfg).items() if keep(k)}
    m = model_cfg
    if ckl.checkpoint_tp(load_dir, tag) == layout.tp:
        sd = ckl.read_shard(load_dir, tag, layout.tp_rank, m.num_layers, keep)
    else:
        full = ckl.merge_shards(ckl.read_shards(load_dir, tag, m.num_layers, keep), specs)
        sd = ckl.split_state_dict(full, specs, layout.tp)[layout.tp_rank]
    ckl.check_shapes(sd, specs, m, f"--load {load_dir} (tag {tag})")
    return {plan.stage_name(k): v for k, v in sd.items()}


def check_stage_layout(model_cfg: ModelConfig, layout: ParallelLayout, load_dir: str) -> None:
    """Errors naming the flag when the checkpoint's model does not split over the layout."""
    if model_cfg.vocab_size % layout.tp:
        raise ValueError(f"--tensor-model-parallel-size {layout.tp} does not divide the padded "
                         f"vocabulary {model_cfg.vocab_size} of --load {load_dir}; use a TP size "
                         f"that divides it")
    if model_cfg.num_layers < layout.pp:
        raise ValueError(f"--pipeline-model-parallel-size {layout.pp} exceeds the "
                         f"{model_cfg.num_layers} layers of --load {load_dir}; use at most "
                         f"{model_cfg.num_layers} stages")


def load_stage(load_dir: str, layout: ParallelLayout, tag: Optional[str] = None,
               dtype: torch.dtype = torch.float32) -> tuple:
    """(PipelineStage in eval mode on layout.device holding this rank's weights, Config with
    dropout off) from a checkpoint saved at any TP/PP."""
    tag = ckl.resolve_tag(load_dir, tag)
    cfg: Config = ckl.load_config(load_dir, tag)
    m = ckl.eval_model_config(cfg.model)
    check_stage_layout(m, layout, load_dir)
    plan = StagePlan.of(m, layout)
    sd = read_stage_state_dict(load_dir, tag, m, layout, plan)
    stage = PipelineStage(m, plan, dtype)
    try:
        stage.load_state_dict({k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                               for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"--load {load_dir}: checkpoint weights do not fit the model of its "
                         f"config.json: {e}") from e
    return stage.to(layout.device).eval(), cfg.replace(model={"hidden_dropout": 0.0,
                                                              "attention_dropout": 0.0})
