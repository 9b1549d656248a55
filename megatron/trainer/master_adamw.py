"""AdamW over fp32 master copies of bf16 weights, run by DeepSpeed's engine as a plain client
optimizer (`--bf16-optimizer local`).

Why not DeepSpeed's own: DeepSpeed 0.19 has no bf16 optimizer at ZeRO stage 0 with fp32
gradient accumulation (it raises NotImplementedError), and its BF16_Optimizer spends about
29 ms of a 1.3B model's 292 ms step on an H100 beyond the AdamW kernel itself (per-parameter
hooks that copy then add each gradient, zeroing, per-tensor norms, a host sync on the norm;
docs/benchmarks.md). Here the same math takes a few passes over memory and no host sync:

- at DP 1, after each backward but the step's last every bf16 `.grad` is folded into an fp32
  `param.main_grad` (Megatron-LM's name) and freed;
- at DP > 1, grad_reducer.py takes each `.grad` into a `main_grad` (bf16 or fp32, DeepSpeed's
  `communication_data_type`; micro-batches summed in fp32) as the backward produces it and
  all-reduces buckets of them during the step's last backward (DeepSpeed's own all-reduce
  would wait for the whole backward);
- the global norm stays on the device: clipping and the skip of a non-finite step are folded
  into the update through a gradient scale and a skip flag on the device;
- on CUDA a Triton kernel (adamw_bf16_kernel.py) updates master, moments and bf16 weight in one
  pass from the final gradient, bf16 or fp32 (large tensors one launch each, the small ones of
  a parameter group one launch together); elsewhere torch's fused AdamW updates the masters
  and they are copied into the weights.

Nothing is sharded: every data-parallel rank holds all masters and moments (ZeRO-0 memory).
The state of parameter p is {"master", "exp_avg", "exp_avg_sq", "step"}, fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.optim.adam import adam as functional_adam

from megatron.parallel.norms import counted_here, global_norm
from megatron.trainer import adamw_bf16_kernel
from megatron.trainer.grad_reducer import OverlappedGradReducer


class MasterWeightAdamW(torch.optim.Optimizer):
    def __init__(self, param_groups: list[dict], *, lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float, clip_grad: float, dp_size: int,
                 tp_group=None, dp_group=None, model_order: Optional[list] = None,
                 communication_dtype: torch.dtype = torch.float32):
        """param_groups: the model's (bf16) parameters, as for torch's AdamW. clip_grad: max
        global L2 norm (0: no clipping). dp_size > 1: gradients are all-reduced over dp_group
        during the backward, in buckets of parameters in model_order (the model's
        .parameters(): the backward produces their gradients in about the reverse order; the
        groups' order, weights then biases, would make the first bucket wait for the end of
        the backward), in communication_dtype (fp32 or bf16). tp_group: the tensor-parallel
        group when TP > 1 (the norm sums over it)."""
        # `fused` also tells checkpoint code to keep `step` on the parameters' device
        super().__init__(param_groups, dict(lr=lr, betas=betas, eps=eps,
                                            weight_decay=weight_decay, fused=True))
        self.all_params = [p for g in self.param_groups for p in g["params"]]  # fixed from here
        self.clip_grad = clip_grad
        self.dp_size = dp_size
        self.tp_group = tp_group
        self.tp_rank = dist.get_rank(tp_group) if tp_group is not None else 0
        self._launches: dict = {}  # (group index, grad dtype) -> (addresses, AdamWLaunches)
        self._global_grad_norm: Optional[torch.Tensor] = None  # DeepSpeed's engine reads it
        # 1.0 when the last step was skipped; on the device, read by our engine after the step
        # (no `overflow` attribute: DeepSpeed's engine would read that inside its step)
        self.found_inf: Optional[torch.Tensor] = None
        for p in self.all_params:
            self.state[p] = {"master": p.detach().float(),
                             "exp_avg": torch.zeros_like(p, dtype=torch.float32),
                             "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32),
                             "step": torch.zeros((), dtype=torch.float32, device=p.device)}
            p.main_grad = None
        if dp_size > 1 and dp_group is None:
            raise ValueError("MasterWeightAdamW: dp_size > 1 needs the data-parallel group")
        # at DP > 1 every main_grad is a persistent view into the reducer's buckets
        if dp_size > 1:
            ours = {id(p) for p in self.all_params}
            order = [p for p in (model_order or self.all_params) if id(p) in ours]
            if len(order) != len(self.all_params):
                raise ValueError("MasterWeightAdamW: model_order must hold every parameter")
            self.reducer = OverlappedGradReducer(order, dp_group, communication_dtype)
        else:
            self.reducer = None
        self.use_kernel = adamw_bf16_kernel.available()  # else torch's fused AdamW and a copy

    @torch.no_grad()
    def fold_grads(self, params: Optional[list] = None) -> None:
        """Add every pending bf16 .grad (of `params`, default all) into its fp32 main_grad and
        free it (after a backward; calling it again does nothing). Multi-tensor copies: one
        kernel for many tensors."""
        pending = [p for p in (self.all_params if params is None else params)
                   if p.grad is not None]
        first = [p for p in pending if p.main_grad is None]
        later = [p for p in pending if p.main_grad is not None]
        if first:
            mains = [torch.empty_like(p.grad, dtype=torch.float32) for p in first]
            torch._foreach_copy_(mains, [p.grad for p in first])
            for p, main in zip(first, mains):
                p.main_grad = main
        if later:
            torch._foreach_add_([p.main_grad for p in later], [p.grad for p in later])
        for p in pending:
            p.grad = None

    def get_grads_for_reduction(self):
        """DeepSpeed's hook at the accumulation boundary: (grads to all-reduce, expert grads).
        Nothing: at DP > 1 the reducer has all-reduced them during the backward; at DP 1 the
        last micro-batch's bf16 gradients stay pending for the one-pass kernel."""
        return [], {}

    def before_backward(self, last: bool) -> None:
        """Our engine says, before each backward, whether it is the step's last."""
        if self.reducer is not None:
            self.reducer.before_backward(last)

    def full_grad(self, p: torch.Tensor) -> Optional[torch.Tensor]:
        """p's accumulated gradient so far, fp32, averaged over DP ranks (for logging; at DP 1
        main_grad plus a pending .grad)."""
        if self.reducer is not None:
            self.reducer.finish()
            return p.main_grad.float() / self.dp_size
        if p.main_grad is None:
            return None if p.grad is None else p.grad.float()
        return p.main_grad if p.grad is None else p.main_grad + p.grad

    @torch.no_grad()
    def grad_norm(self, grads_of) -> torch.Tensor:
        """Global L2 norm of grads_of(p) over the parameters that have one (0-d fp32, on the
        device; TP shards counted once)."""
        grads = [grads_of(p) for p in self.all_params if counted_here(p, self.tp_rank)]
        return global_norm([g for g in grads if g is not None], self.tp_group,
                           self.all_params[0].device)

    def _clip_and_skip(self, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, found_inf): the kernels divide each gradient by scale = max(norm / clip, 1),
        which is clipping to clip_grad (DeepSpeed's and Megatron's rule, with their 1e-6), and
        skip the update where found_inf is 1."""
        found_inf = (~torch.isfinite(norm)).float()
        scale = (torch.clamp((norm + 1e-6) / self.clip_grad, min=1.0) if self.clip_grad > 0
                 else torch.ones_like(norm))
        return scale, found_inf

    def _final_grads(self) -> dict:
        """{id(p): p's gradient for the update} of the parameters that have one, after folding
        where needed: at DP > 1 main_grad, summed over ranks (bf16 or fp32); at DP 1 the fp32
        main_grad plus the last pending .grad, or the bf16 .grad alone (one micro-batch) where
        the kernel takes it."""
        if self.reducer is not None:
            self.reducer.finish()  # every main_grad: the sum over DP ranks
            return {id(p): p.main_grad for p in self.all_params}
        self.fold_grads([p for p in self.all_params
                         if p.main_grad is not None or not self._kernel_takes(p, p.grad)])
        return {id(p): p.main_grad if p.main_grad is not None else p.grad
                for p in self.all_params if p.main_grad is not None or p.grad is not None}

    def _kernel_takes(self, p: torch.Tensor, grad: Optional[torch.Tensor]) -> bool:
        """Does the Triton kernel update p from grad: contiguous bf16 CUDA weight, contiguous
        bf16 or fp32 gradient."""
        return (self.use_kernel and grad is not None and p.is_cuda and
                p.dtype == torch.bfloat16 and p.is_contiguous() and grad.is_contiguous() and
                grad.dtype in (torch.bfloat16, torch.float32))

    @torch.no_grad()
    def step(self, closure=None):
        grads = self._final_grads()
        norm = self.grad_norm(lambda p: grads.get(id(p)))
        if self.reducer is not None:
            norm = norm / self.dp_size  # of the mean gradient
        scale, found_inf = self._clip_and_skip(norm)
        if self.reducer is not None:
            scale = scale * self.dp_size  # the updates divide the summed gradients by it
        masters, weights = [], []
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            hyper = dict(lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"])
            present = [p for p in group["params"] if id(p) in grads]
            by_kernel = [p for p in present if self._kernel_takes(p, grads[id(p)])]
            for dtype in (torch.bfloat16, torch.float32):
                params = [p for p in by_kernel if grads[id(p)].dtype == dtype]
                if params:
                    self._step_one_pass((index, dtype), params, [grads[id(p)] for p in params],
                                        scale, found_inf, beta1, beta2, **hyper)
            taken = {id(p) for p in by_kernel}
            folded = [p for p in present if id(p) not in taken]  # to fp32 for torch's AdamW
            if folded:
                states = [self.state[p] for p in folded]
                functional_adam(
                    [s["master"] for s in states], [grads[id(p)].float() for p in folded],
                    [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                    [s["step"] for s in states], fused=True, grad_scale=scale,
                    found_inf=found_inf, decoupled_weight_decay=True, amsgrad=False,
                    beta1=beta1, beta2=beta2, maximize=False, **hyper)
                masters += [s["master"] for s in states]
                weights += folded
        if weights:
            torch._foreach_copy_(weights, masters)  # a skipped step copies the old masters
        for p in self.all_params:
            p.grad = None
        if self.reducer is not None:
            self.reducer.reset()
        else:
            for p in self.all_params:
                p.main_grad = None
        self._global_grad_norm, self.found_inf = norm, found_inf

    def _step_one_pass(self, launch_key, params, grads, scale, found_inf, beta1, beta2,
                       **hyper) -> None:
        """The kernel's update of params (one group, gradients of one dtype)."""
        from megatron.trainer.adamw_bf16_kernel import AdamWLaunches, adamw_bf16_
        states = [self.state[p] for p in params]
        tensors = (params, [s["master"] for s in states], [s["exp_avg"] for s in states],
                   [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
        # the launches' tables hold addresses: rebuilt when any changes (a parameter without a
        # gradient this step, optimizer states replaced by a checkpoint load)
        key = tuple(t.data_ptr() for ts in tensors for t in ts)
        cached = self._launches.get(launch_key)
        if cached is None or cached[0] != key:
            cached = self._launches[launch_key] = (key, AdamWLaunches(*tensors))
        # a skipped step does not count. A list of tensors: a lone 0-d tensor would bind to
        # the Scalar overload and be read with .item(), a host sync
        torch._foreach_add_(tensors[4], [1.0 - found_inf] * len(params))
        adamw_bf16_(cached[1], grads, scale, found_inf, beta1=beta1, beta2=beta2, **hyper)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.all_params:
            p.grad = None
        if self.reducer is not None:
            self.reducer.reset()  # the buckets stay; the next step overwrites them
        else:
            for p in self.all_params:
                p.main_grad = None

    @torch.no_grad()
    def refresh_fp32_params(self) -> None:
        """Masters := the current bf16 weights (after loading weights without the optimizer)."""
        for p in self.all_params:
            self.state[p]["master"].copy_(p.detach())

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's version casts every state tensor to its parameter's dtype (bf16): keep fp32."""
        params = self.all_params
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        if len(saved) != len(params) or len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state of {len(saved)} parameters in "
                             f"{len(state_dict['param_groups'])} groups; this model has "
                             f"{len(params)} in {len(self.param_groups)}")
        for i, p in zip(saved, params):
            state = state_dict["state"][i]
            if set(state) != set(self.state[p]):
                raise ValueError(f"optimizer state has {sorted(state)}, expected "
                                 f"{sorted(self.state[p])} (another optimizer's checkpoint?)")
            for key, value in state.items():
                if value.shape != self.state[p][key].shape:
                    raise ValueError(f"optimizer state {key} of shape {tuple(value.shape)}, "
                                     f"parameter {tuple(p.shape)}")
                self.state[p][key].copy_(value)
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
