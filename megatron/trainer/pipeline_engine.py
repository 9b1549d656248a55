"""TrainEngine on DeepSpeed's PipelineEngine: 1F1B over the micro-batches of a global batch,
ZeRO 0/1, tied-embedding gradients all-reduced between first and last stage.

Every rank is handed the same micro-batches as with PP = 1 (TP ranks the same data, DP ranks
their slice); DeepSpeed reads inputs on the first stage and labels on the last. The step's loss
(global-batch mean) is broadcast from the last stage to the whole pipeline, so rank 0 (first
stage) logs it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.config.schema import Config
from megatron.data.batch import Batch
from megatron.parallel.layout import ParallelLayout
from megatron.parallel.norms import counted_here, global_norm
from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine
from megatron.trainer.ds_config import build_deepspeed_config
from megatron.trainer.engine import StepResult, TrainEngine
from megatron.trainer.optimizer import build_optimizer
from megatron.trainer.schedules import build_lr_scheduler


class PipelineTrainEngine(DeepSpeedTrainEngine):
    """save/load/current_lr/set_global_batch_size as DeepSpeedTrainEngine's."""

    def __init__(self, module, cfg: Config, layout: ParallelLayout, gbs: int):
        import deepspeed

        self.layout = layout
        self.ds_config = build_deepspeed_config(cfg, layout.world_size)
        stage = self.ds_config["zero_optimization"]["stage"]
        if stage > 1:
            raise ValueError(f"ZeRO stage {stage} does not work with DeepSpeed's pipeline engine "
                             f"(--pipeline-model-parallel-size {layout.pp}): use --zero-stage 0 "
                             f"or 1")
        optimizer = build_optimizer(module, cfg.optimizer)
        self.scheduler = build_lr_scheduler(optimizer, cfg, gbs)
        # No mpu: DeepSpeed takes the pipeline module's grid (checked against our layout).
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config, dist_init_required=False)
        self.model = module
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        if stage == 0 and not (cfg.training.bf16 or cfg.training.fp16):
            self.engine.clip_fp32_gradients = self._clip_fp32_gradients

    def _samples(self, micro_batches: Sequence[Batch]):
        """((tokens, position_ids[, prefix_lengths][, document_ids]), (labels, loss_mask)) per
        micro-batch (pipeline.py tells the optional ones apart by their shapes)."""
        for mb in micro_batches:
            b = mb.to(self.layout.device)
            extra = tuple(t for t in (b.prefix_lengths, b.document_ids) if t is not None)
            yield (b.tokens, b.position_ids, *extra), (b.labels, b.loss_mask)

    start_step = TrainEngine.start_step  # train_batch waits for its step itself

    def train_step(self, micro_batches: Sequence[Batch], samples: int,
                   layer_grad_norms: bool = False, skip_if=None,
                   before_sync=None) -> StepResult:
        # layer_grad_norms and skip_if: refused at start-up for PP > 1 (train_batch steps
        # internally, with no point between the losses and the update)
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"got {len(micro_batches)} micro-batches, DeepSpeed expects "
                             f"{self.grad_accum} per step")
        with self.timer("pipeline step"):  # forward, backward and optimizer interleaved
            loss = self.engine.train_batch(self._samples(micro_batches))  # DP mean, all stages
        if before_sync is not None:
            before_sync()  # (train_batch has synchronised already)
        skipped = bool(getattr(self.engine, "was_step_applied", lambda: True)() is False)
        if not skipped:
            self.scheduler.step(samples)
        norm = self.engine.get_global_grad_norm()
        return StepResult(loss=float(loss), grad_norm=None if norm is None else float(norm),
                          lr=self.current_lr(), skipped=skipped)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> tuple[float, float]:
        # Per-rank mean, not DeepSpeed's DP average, so the caller can weight by tokens.
        out = self.engine.eval_batch(self._samples([batch]), reduce_output=None,
                                     bcast_loss=False, num_micro_batches=1)
        mean = torch.zeros((), dtype=torch.float32, device=self.layout.device)
        if self.layout.is_last_stage:
            mean += out[0].float()
        dist.broadcast(mean, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=self.layout.pp_group)
        n = batch.loss_mask.sum().item()
        return mean.item() * n, n

    def _clip_fp32_gradients(self) -> None:
        """Replaces DeepSpeed's ZeRO-0 fp32 clipping (runtime.utils.clip_grad_norm_), which
        counts replicated parameters on model-parallel rank 0 only: with pipeline stages that
        drops every later stage's norms and biases and counts the tied embedding twice."""
        e, max_norm = self.engine, self.engine.gradient_clipping()
        params = [p for p in e.module.parameters() if p.grad is not None]
        norm = self._replica_norm(params, lambda p: p.grad)
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef)
        e._global_grad_norm = norm.item()

    def param_norm(self) -> float:
        return self._replica_norm(list(self.model.parameters()), lambda p: p).item()

    def _replica_norm(self, params, tensor_of) -> torch.Tensor:
        """L2 norm of tensor_of(p) over the whole model, each tensor counted once per DP
        replica (TP shards, pipeline stages, the tied embedding's second copy excluded)."""
        return global_norm([tensor_of(p).detach() for p in params
                            if counted_here(p, self.layout.tp_rank)],
                           self.engine.grid.get_model_parallel_group(),  # pipe x TP
                           self.layout.device)
