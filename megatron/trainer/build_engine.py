"""The engine for a layout: GPTModel on DeepSpeedTrainEngine for PP = 1, the pipeline module
on PipelineTrainEngine for PP > 1."""
from __future__ import annotations

from megatron.config.schema import Config
from megatron.parallel.layout import ParallelLayout
from megatron.trainer.engine import TrainEngine


def build_engine(cfg: Config, layout: ParallelLayout, gbs: int, model=None) -> TrainEngine:
    """Builds the model from the default generator (seed it first) unless one is given; the
    engine's `.model` is the (local part of the) model."""
    recompute = cfg.training.checkpoint_activations
    if layout.pp == 1:
        from megatron.model.gpt import GPTModel
        from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine
        if model is None:
            model = GPTModel(cfg.model, checkpoint_activations=recompute).to(layout.device)
        _maybe_compile(model, cfg)
        return DeepSpeedTrainEngine(model, cfg, layout, gbs)
    from megatron.trainer.pipeline import build_pipeline_module
    from megatron.trainer.pipeline_engine import PipelineTrainEngine
    if model is None:
        model = build_pipeline_module(cfg, layout, checkpoint_activations=recompute)
    _maybe_compile(model, cfg)
    return PipelineTrainEngine(model, cfg, layout, gbs)


def _maybe_compile(model, cfg: Config) -> None:
    if cfg.training.torch_compile:
        from megatron.model.compile import compile_layers
        compile_layers(model)
