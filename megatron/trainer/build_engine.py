"""The engine for a layout: GPTModel on DeepSpeedTrainEngine for PP = 1, the pipeline module
on PipelineTrainEngine for PP > 1."""
from __future__ import annotations

from megatron.config.schema import Config
from megatron.parallel.layout import ParallelLayout
from megatron.trainer.engine import TrainEngine


def build_engine(cfg: Config, layout: ParallelLayout, gbs: int, model=None) -> TrainEngine:
    """Builds the model from the default generator (seed it first) unless one is given; the
    engine's `.model` is the (local part of the) model."""
    t = cfg.training
    recompute = t.checkpoint_activations or t.recompute_granularity == "full"
    if layout.pp == 1:
        from megatron.model.gpt import GPTModel
        from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine
        if model is None:
            model = GPTModel(cfg.model, checkpoint_activations=recompute).to(layout.device)
        _apply_execution_options(model, cfg, layout)
        return DeepSpeedTrainEngine(model, cfg, layout, gbs)
    from megatron.trainer.pipeline import build_pipeline_module
    from megatron.trainer.pipeline_engine import PipelineTrainEngine
    if model is None:
        model = build_pipeline_module(cfg, layout, checkpoint_activations=recompute)
    _apply_execution_options(model, cfg, layout)
    return PipelineTrainEngine(model, cfg, layout, gbs)


def _require(option: str, why, instead: str) -> None:
    """An optional kernel library the machine cannot run is a start-up error saying why."""
    if why:
        from megatron.config.validate import ConfigError
        raise ConfigError(f"{option} cannot run here: {why}; use {instead}")


def _apply_execution_options(model, cfg: Config, layout: ParallelLayout) -> None:
    if cfg.parallel.sync_tp_duplicated_parameters:
        from megatron.parallel.tp_sync import sync_tp_duplicated_before_forward
        sync_tp_duplicated_before_forward(model, layout)
    if cfg.training.recompute_granularity == "selective":
        from megatron.model.recompute import enable_selective_recompute
        enable_selective_recompute(model)
    if cfg.model.mlp_kernel == "quack":
        from megatron.model.quack_mlp import quack_unavailable_reason
        _require("--mlp-kernel quack", quack_unavailable_reason(), "--mlp-kernel torch")
    if cfg.model.attention_kernel == "fa4":
        from megatron.model.fa4_attention import fa4_unavailable_reason
        _require("--attention-kernel fa4", fa4_unavailable_reason(), "--attention-kernel auto")
    if cfg.training.torch_compile:
        from megatron.model.compile import compile_layers
        compile_layers(model)
    if cfg.training.enable_cuda_graph:
        from megatron.config.validate import ConfigError
        from megatron.model.cuda_graphs import LayerGraphs
        if layout.device.type != "cuda":
            raise ConfigError(f"--enable-cuda-graph needs CUDA GPUs; this run is on "
                              f"{layout.device.type}")
        model.layer_graphs = LayerGraphs(model.layers)  # captured at the first training step
