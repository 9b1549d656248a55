"""AdamW over fp32 master copies of bf16 weights, run by DeepSpeed's engine as a plain client
optimizer (`--bf16-optimizer local`).

Why not DeepSpeed's own: DeepSpeed 0.19 has no bf16 optimizer at ZeRO stage 0 with fp32
gradient accumulation (it raises NotImplementedError), and its BF16_Optimizer spends about
29 ms of a 1.3B model's 292 ms step on an H100 beyond the AdamW kernel itself (per-parameter
hooks that copy then add each gradient, zeroing, per-tensor norms, a host sync on the norm;
docs/benchmarks.md). Here the same math takes a few passes over memory and no host sync:

- after each backward every bf16 `.grad` is folded into an fp32 `param.main_grad`
  (Megatron-LM's name) and freed;
- DeepSpeed all-reduces the fp32 gradients over data-parallel ranks (get_grads_for_reduction);
- the global norm stays on the device: clipping and the skip of a non-finite step are folded
  into torch's fused AdamW kernel through its grad_scale / found_inf arguments;
- the updated masters are copied into the bf16 weights.

Nothing is sharded: every data-parallel rank holds all masters and moments (ZeRO-0 memory).
The state of parameter p is {"master", "exp_avg", "exp_avg_sq", "step"}, fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.optim.adam import adam as functional_adam


class MasterWeightAdamW(torch.optim.Optimizer):
    def __init__(self, param_groups: list[dict], *, lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float, clip_grad: float, dp_size: int,
                 tp_group=None):
        """param_groups: the model's (bf16) parameters, as for torch's AdamW. clip_grad: max
        global L2 norm (0: no clipping). dp_size > 1: DeepSpeed all-reduces main_grad.
        tp_group: the tensor-parallel group when TP > 1 (the norm sums over it)."""
        # `fused` also tells checkpoint code to keep `step` on the parameters' device
        super().__init__(param_groups, dict(lr=lr, betas=betas, eps=eps,
                                            weight_decay=weight_decay, fused=True))
        self.clip_grad = clip_grad
        self.dp_size = dp_size
        self.tp_group = tp_group
        self._global_grad_norm: Optional[torch.Tensor] = None  # DeepSpeed's engine reads it
        self.found_inf: Optional[torch.Tensor] = None  # 1.0 when the last step was skipped
        for p in self._params():
            self.state[p] = {"master": p.detach().float(),
                             "exp_avg": torch.zeros_like(p, dtype=torch.float32),
                             "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32),
                             "step": torch.zeros((), dtype=torch.float32, device=p.device)}
            p.main_grad = None

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def fold_grads(self) -> None:
        """Add every pending bf16 .grad into its fp32 main_grad and free it (after a backward;
        calling it again does nothing). Multi-tensor copies: one kernel for many tensors."""
        pending = [p for p in self._params() if p.grad is not None]
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
        """DeepSpeed's hook at the accumulation boundary: (grads to all-reduce, expert grads)."""
        self.fold_grads()
        if self.dp_size == 1:
            return [], {}
        return [p.main_grad for p in self._params() if p.main_grad is not None], {}

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the main gradients (0-d, on the device; TP shards counted once)."""
        grads = [p.main_grad for p in self._params() if p.main_grad is not None]
        if self.tp_group is not None:
            from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
            grads = [p.main_grad for p in self._params() if p.main_grad is not None and
                     param_is_not_tensor_parallel_duplicate(p)]
        sq = torch.zeros((), dtype=torch.float32, device=self._params()[0].device)
        if grads:
            sq = torch.stack(torch._foreach_norm(grads)).square().sum()
        if self.tp_group is not None:
            dist.all_reduce(sq, group=self.tp_group)
        return sq.sqrt()

    @torch.no_grad()
    def step(self, closure=None):
        self.fold_grads()
        norm = self.grad_norm()
        found_inf = (~torch.isfinite(norm)).float()
        # torch's fused kernel divides each gradient by grad_scale: max(norm / clip, 1) is
        # clipping to clip_grad (DeepSpeed's and Megatron's rule, with their 1e-6)
        scale = (torch.clamp((norm + 1e-6) / self.clip_grad, min=1.0)
                 if self.clip_grad > 0 else None)
        masters, weights = [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.main_grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            functional_adam(
                [s["master"] for s in states], [p.main_grad for p in params],
                [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                [s["step"] for s in states], fused=True, grad_scale=scale,
                found_inf=found_inf, decoupled_weight_decay=True, amsgrad=False, beta1=beta1,
                beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                eps=group["eps"], maximize=False)
            masters += [s["master"] for s in states]
            weights += params
        if weights:
            torch._foreach_copy_(weights, masters)  # a skipped step copies the old masters
        for p in weights:
            p.main_grad = None
        self._global_grad_norm, self.found_inf = norm, found_inf

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            p.grad = None
            p.main_grad = None

    @property
    def overflow(self) -> bool:
        """DeepSpeed's engine asks after each step whether it was skipped (a host sync)."""
        return bool(self.found_inf is not None and self.found_inf.item() != 0.0)

    @torch.no_grad()
    def refresh_fp32_params(self) -> None:
        """Masters := the current bf16 weights (after loading weights without the optimizer)."""
        for p in self._params():
            self.state[p]["master"].copy_(p.detach())

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's version casts every state tensor to its parameter's dtype (bf16): keep fp32."""
        params = self._params()
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
