"""Run a function on N CPU ranks over gloo, as separate spawned processes.

    results = run_on_ranks(fn, world_size=4, args=(...), timeout=120)

`fn(rank, world_size, *args)` runs with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set
(torch.distributed is not started: call `initialize_parallel` or `init_process_group`). Its
return value (picklable) comes back in rank order. A rank that raises fails the call at once with
that rank's traceback; a run past `timeout` seconds is killed and fails; nothing hangs.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback

from megatron.parallel.launch import free_port


class RankFailed(RuntimeError):
    pass


def _entry(fn, rank, world_size, port, args, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        import torch
        torch.set_num_threads(1)
        out = fn(rank, world_size, *args)
        results.put((rank, "ok", out))
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def run_on_ranks(fn, world_size: int, args: tuple = (), timeout: float = 300.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    outs: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outs) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RankFailed(f"timed out after {timeout:.0f}s; ranks done: {sorted(outs)}")
            try:
                rank, status, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in outs]
                if dead:
                    raise RankFailed(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}")
                continue
            if status == "error":
                raise RankFailed(f"rank {rank} raised:\n{value}")
            outs[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5 if len(outs) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return [outs[r] for r in range(world_size)]
