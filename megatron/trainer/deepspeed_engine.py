"""TrainEngine on DeepSpeed: ZeRO 0/1/2, bf16 with fp32 master weights, fp16 loss scaling,
gradient accumulation and clipping all come from `deepspeed.initialize`."""
from __future__ import annotations

import glob
import os
from typing import Sequence

import torch
import torch.distributed as dist

from megatron.config.schema import Config
from megatron.data.batch import Batch
from megatron.parallel.layout import ParallelLayout
from megatron.parallel.norms import counted_here, global_norm
from megatron.trainer.ds_config import (build_deepspeed_config, local_communication_dtype,
                                        uses_local_bf16_optimizer)
from megatron.trainer.engine import PendingStep, StepResult, TrainEngine
from megatron.trainer.host_copy import DeviceClock, to_host
from megatron.trainer.optimizer import build_master_weight_optimizer, build_optimizer
from megatron.trainer.schedules import build_lr_scheduler


class _MegatronMPU:
    """The `mpu` object DeepSpeed asks for: its "model parallel" is our tensor parallel."""

    def __init__(self, layout: ParallelLayout):
        self.layout = layout

    def get_model_parallel_rank(self):
        return self.layout.tp_rank

    def get_model_parallel_world_size(self):
        return self.layout.tp

    def get_model_parallel_group(self):
        return self.layout.tp_group

    def get_data_parallel_rank(self):
        return self.layout.dp_rank

    def get_data_parallel_world_size(self):
        return self.layout.dp

    def get_data_parallel_group(self):
        return self.layout.dp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


class DeepSpeedTrainEngine(TrainEngine):
    local_bf16 = False  # our fp32-master optimizer runs (never in the pipeline subclass)

    def __init__(self, model: torch.nn.Module, cfg: Config, layout: ParallelLayout, gbs: int):
        import deepspeed

        self.layout = layout
        self.ds_config = build_deepspeed_config(cfg, layout.world_size)
        # --bf16-optimizer local: DeepSpeed sees an fp32 run; the weights are bf16 (cast here
        # as DeepSpeed would: parameters only, buffers keep their dtype) and the optimizer
        # keeps the fp32 masters
        self.local_bf16 = uses_local_bf16_optimizer(cfg, layout.world_size)
        if self.local_bf16:
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
            optimizer = build_master_weight_optimizer(
                model, cfg.optimizer, layout, local_communication_dtype(cfg, layout.world_size))
        else:
            optimizer = build_optimizer(model, cfg.optimizer)
        self.scheduler = build_lr_scheduler(optimizer, cfg, gbs)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, mpu=_MegatronMPU(layout),
            dist_init_required=False)
        self.model = model
        # when each step's work ends on the device, for the logged step times
        self._clock = DeviceClock() if layout.device.type == "cuda" else None
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        # DeepSpeed's ZeRO, bf16 and fp16 optimizers skip a step whose gradients are not finite
        # (and report it through was_step_applied); its plain fp32 path does not, so we check.
        self._checks_finite_grads_itself = (self.engine.zero_optimization_stage() == 0 and
                                            not cfg.training.bf16 and not cfg.training.fp16)

    def describe_optimizer(self) -> str:
        if self.local_bf16:
            return ("MasterWeightAdamW (fp32 master weights and moments on every rank, "
                    "--bf16-optimizer local)")
        return f"{type(self.optimizer).__name__} (DeepSpeed, ZeRO stage " \
               f"{self.engine.zero_optimization_stage()})"

    def _grads_finite(self) -> bool:
        bad = torch.zeros((), device=self.layout.device)
        for p in self.model.parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                bad.fill_(1.0)
                break
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips together
        return bad.item() == 0.0

    def param_norm(self) -> float:
        """L2 norm of all (unsharded) parameters, each counted once across TP ranks."""
        tp_rank = self.layout.tp_rank
        return global_norm([p.detach() for p in self.model.parameters()
                            if counted_here(p, tp_rank)],
                           self.layout.tp_group, self.layout.device).item()

    def _loss(self, batch: Batch) -> torch.Tensor:
        b = batch.to(self.layout.device)
        logits = self.engine(b.tokens, position_ids=b.position_ids,
                             prefix_lengths=b.prefix_lengths, document_ids=b.document_ids)
        return self.model.loss(logits, b.labels, b.loss_mask)

    def _global_mean(self, local_sum: torch.Tensor, micro_steps: int) -> float:
        mean = local_sum.clone()
        dist.all_reduce(mean, group=self.layout.dp_group)
        return mean.item() / (micro_steps * self.layout.dp)

    def layer_grad_norms(self) -> dict:
        """{block: L2 norm} of the reduced (DP-averaged), unclipped gradients; call after the
        last backward of a step and before its optimizer step. Every TP shard counts once."""
        from deepspeed.utils import safe_get_full_grad

        from megatron.trainer.universal import block_of
        blocks = {}
        for name, p in self.model.named_parameters():
            grad = safe_get_full_grad(p) if hasattr(p, "_hp_mapping") else \
                self.optimizer.full_grad(p) if self.local_bf16 else p.grad
            if grad is None:
                continue
            if counted_here(p, self.layout.tp_rank):
                block = block_of(name)
                blocks[block] = blocks.get(block, 0.0) + grad.float().pow(2).sum()
        names = sorted(blocks, key=_block_order)
        sq = torch.stack([torch.as_tensor(blocks[n]) for n in names]).to(self.layout.device)
        dist.all_reduce(sq, group=self.layout.tp_group)
        return {n: v.sqrt().item() for n, v in zip(names, sq)}

    def train_step(self, micro_batches: Sequence[Batch], samples: int,
                   layer_grad_norms: bool = False, skip_if=None,
                   before_sync=None) -> StepResult:
        return self.start_step(micro_batches, samples, layer_grad_norms, skip_if,
                               before_sync).result()

    def start_step(self, micro_batches: Sequence[Batch], samples: int,
                   layer_grad_norms: bool = False, skip_if=None,
                   before_sync=None) -> PendingStep:
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"got {len(micro_batches)} micro-batches, DeepSpeed expects "
                             f"{self.grad_accum} per step")
        self.engine.train()
        total = torch.zeros((), dtype=torch.float32, device=self.layout.device)
        skipped, norms = False, None
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # Say where the boundary is: DeepSpeed's own count of micro-steps goes out of phase
            # when the accumulation steps change (batch-size rampup).
            self.engine.set_gradient_accumulation_boundary(last)
            with self.timer("forward"):
                loss = self._loss(mb)
            total += loss.detach().float()
            if last and skip_if is not None and skip_if(self._global_mean(total, i + 1)):
                # Drop the whole step through DeepSpeed's (and our fp32) non-finite-gradient
                # skip, the path NaN steps take: every rank decided on the same global mean.
                loss = loss * float("nan")
            with self.timer("backward"):
                if self.local_bf16:  # at DP > 1 it all-reduces during the last backward
                    self.optimizer.before_backward(last)
                self.engine.backward(loss)
                if self.local_bf16 and not last:
                    self.optimizer.fold_grads()  # into fp32 before the next micro-batch's
            if last:
                # The previous step's results and LR schedule step, now that this step's
                # forward and backward are queued behind it
                self._settle()
            if last and self._checks_finite_grads_itself and not self._grads_finite():
                self.engine.zero_grad()
                skipped = True
                break
            if last and layer_grad_norms:
                norms = self.layer_grad_norms()
            with self.timer("optimizer" if last else "backward"):
                self.engine.step()  # applies the update only at the accumulation boundary
        mean_loss = total / len(micro_batches)
        if self.layout.dp > 1:  # (a collective over one rank still costs a launch and a wait)
            dist.all_reduce(mean_loss, group=self.layout.dp_group)
            mean_loss /= self.layout.dp
        on_device = {"loss": mean_loss}
        norm = self.engine.get_global_grad_norm()
        if torch.is_tensor(norm):
            on_device["norm"] = norm
        if self.local_bf16 and self.optimizer.found_inf is not None and not skipped:
            on_device["found_inf"] = self.optimizer.found_inf  # (our optimizer's skip)
        elif not skipped:
            skipped = not self.engine.was_step_applied()  # DeepSpeed's optimizers decided
        staged = to_host(on_device)
        end = self._clock.mark() if self._clock is not None else None
        if before_sync is not None:
            before_sync()  # host work while the device runs this step
        self._in_flight = PendingStep(lambda: self._finish(staged, norm, skipped, samples, norms),
                                      device_time=end.time if end is not None else None)
        return self._in_flight

    def _finish(self, staged, norm, skipped: bool, samples: int, norms) -> StepResult:
        values = staged()  # waits for the step's device work
        skipped = skipped or values.get("found_inf", 0.0) != 0.0
        if not skipped:
            self.scheduler.step(samples)
        norm = values.get("norm", norm)
        return StepResult(loss=values["loss"], grad_norm=None if norm is None else float(norm),
                          lr=self.current_lr(), skipped=skipped, layer_grad_norms=norms)

    _in_flight = None  # the last started step, until its results are read

    def _settle(self) -> None:
        """Finish the step in flight (read its results, step the LR schedule) if any."""
        step, self._in_flight = self._in_flight, None
        if step is not None:
            step.result()

    def skip_step(self, samples: int) -> None:
        self._settle()
        self.scheduler.step(samples)

    def set_global_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size != self.engine.train_batch_size():
            self.engine.set_train_batch_size(global_batch_size)
        self.grad_accum = self.engine.gradient_accumulation_steps()

    def current_lr(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> tuple[float, float]:
        self.engine.eval()
        mean = self._loss(batch)
        n = batch.loss_mask.sum().item()
        return mean.item() * n, n

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        self._settle()
        client_state = dict(client_state, lr_scheduler=self.scheduler.state_dict(),
                            dropout_rng=self.model.rng.get_states())
        # `latest` is written by megatron/trainer/checkpoint.py once the tag is complete
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state,
                                    save_latest=False)

    def load_universal(self, directory: str, tag: str, cfg: Config) -> dict:
        self._settle()
        from megatron.trainer.universal import load_universal
        meta = load_universal(self, cfg, self.layout, directory, tag)
        if "lr_scheduler" in meta:
            self.scheduler.load_state_dict(meta["lr_scheduler"])
        return meta

    def load(self, directory: str, tag: str, load_optimizer: bool = True,
             load_rng: bool = True) -> dict:
        self._settle()
        if load_optimizer:
            check_optimizer_files(directory, tag, self.local_bf16)
        path, client_state = self.engine.load_checkpoint(
            directory, tag=tag, load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"--load {directory}: DeepSpeed could not load checkpoint {tag}")
        if self.local_bf16 and not load_optimizer:
            self.optimizer.refresh_fp32_params()  # masters from the loaded weights
        if load_optimizer and "lr_scheduler" in client_state:
            self.scheduler.load_state_dict(client_state["lr_scheduler"])
        if load_rng and "dropout_rng" in client_state:
            self.model.rng.set_states(client_state["dropout_rng"])
        return client_state


def check_optimizer_files(directory: str, tag: str, local_bf16: bool) -> None:
    """Refuse, by name, a checkpoint whose optimizer states another optimizer wrote: DeepSpeed's
    sharded ones sit in *optim_states.pt files, ours in the model-states file."""
    sharded = glob.glob(os.path.join(directory, tag, "*optim_states.pt"))
    if local_bf16 and sharded:
        raise ValueError(f"--load {directory}/{tag}: its optimizer states were written by "
                         f"DeepSpeed's bf16/ZeRO optimizer ({os.path.basename(sharded[0])}); "
                         f"resume with --bf16-optimizer deepspeed, or convert it with "
                         f"tools/checkpoint_to_universal.py and load with --universal-checkpoint")


def _block_order(block: str) -> tuple:
    """embedding, layers.0, layers.1, ..., head."""
    if block.startswith("layers."):
        return (1, int(block.split(".")[1]))
    return (0 if block == "embedding" else 2, 0)
