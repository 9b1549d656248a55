"""The parallel layout: sizes, this rank's (pp, dp, tp) coordinates and its process groups.

One object built at start-up and handed to whoever needs groups. Rank order is TP innermost
(within a node), then DP, then PP, the order megatron-core's `parallel_state` uses with
order="tp-cp-ep-dp-pp" and DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.config.schema import ParallelConfig
from megatron.parallel.launch import LaunchEnv, export_launch_env, resolve_launch_env


@dataclass(frozen=True)
class ParallelLayout:
    tp: int
    pp: int
    dp: int
    rank: int
    world_size: int
    device: torch.device

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def tp_group(self):
        from megatron.core import parallel_state
        return parallel_state.get_tensor_model_parallel_group()

    @property
    def dp_group(self):
        from megatron.core import parallel_state
        return parallel_state.get_data_parallel_group()

    @property
    def pp_group(self):
        from megatron.core import parallel_state
        return parallel_state.get_pipeline_model_parallel_group()

    def describe(self) -> str:
        return (f"layout TP{self.tp} x PP{self.pp} x DP{self.dp} = {self.world_size} ranks; "
                f"rank {self.rank} -> (pp {self.pp_rank}, dp {self.dp_rank}, tp {self.tp_rank}) "
                f"on {self.device}")


def layout_sizes(pcfg: ParallelConfig, world_size: int) -> tuple[int, int, int]:
    """(tp, pp, dp) for a world size; raises naming the flags when they do not divide it."""
    tp, pp = pcfg.tensor_model_parallel_size, pcfg.pipeline_model_parallel_size
    if tp < 1 or pp < 1 or world_size % (tp * pp):
        raise ValueError(
            f"world size {world_size} is not a multiple of --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp}; launch TP x PP x DP processes")
    return tp, pp, world_size // (tp * pp)


def initialize_parallel(pcfg: ParallelConfig, launch: LaunchEnv | None = None) -> ParallelLayout:
    """Start torch.distributed (if needed) and megatron-core's parallel_state; return the layout."""
    from megatron.core import parallel_state

    launch = launch or resolve_launch_env()
    tp, pp, dp = layout_sizes(pcfg, launch.world_size)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", launch.local_rank % torch.cuda.device_count()) if use_cuda \
        else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        export_launch_env(launch)
        backend = pcfg.distributed_backend
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{launch.master_addr}:"
                                f"{launch.master_port}", rank=launch.rank,
                                world_size=launch.world_size,
                                timeout=datetime.timedelta(minutes=pcfg.distributed_timeout_minutes),
                                device_id=device if backend == "nccl" else None)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        distributed_timeout_minutes=pcfg.distributed_timeout_minutes, order="tp-cp-ep-dp-pp",
        create_gloo_process_groups=False)
    layout = ParallelLayout(tp=tp, pp=pp, dp=dp, rank=dist.get_rank(),
                            world_size=dist.get_world_size(), device=device)
    _check_against_parallel_state(layout)
    return layout


def _check_against_parallel_state(layout: ParallelLayout) -> None:
    from megatron.core import parallel_state as ps
    got = (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(),
           ps.get_pipeline_model_parallel_rank())
    want = (layout.tp_rank, layout.dp_rank, layout.pp_rank)
    if got != want:
        raise RuntimeError(f"rank {layout.rank}: megatron-core coordinates (tp, dp, pp) {got} "
                           f"differ from the layout's {want}")


def destroy_parallel() -> None:
    from megatron.core import parallel_state
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
