"""Where this process sits in the job: rank, world size and rendezvous from the launcher's env.

Works with torchrun and the deepspeed launcher (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*), with
`srun` one task per GPU (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, master = the job's first node),
and with a plain `python pretrain_gpt.py` (a single process on 127.0.0.1).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun|slurm|single


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as 'gpu[003-005,7],login1'."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    m = re.match(r"^(.*?)\[([^\]]+)\]$", head)
    if not m:
        return head
    first = re.split(r"[,-]", m.group(2))[0]
    return m.group(1) + first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_launch_env(environ=None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                         "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        port = int(env.get("MASTER_PORT", 6000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_LOCALID", 0)), addr, port, "slurm")
    # a fresh port: a MASTER_PORT inherited from a parent process may be that process's own
    return LaunchEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def export_launch_env(le: LaunchEnv) -> None:
    """Set the launcher variables DeepSpeed and other libraries read (SLURM launches lack them).
    A single process only gets LOCAL_RANK, so nothing leaks into the processes it starts (a
    test suite, an sbatch from a notebook)."""
    if le.launcher == "single":
        os.environ.setdefault("LOCAL_RANK", "0")
        return
    os.environ.update(RANK=str(le.rank), WORLD_SIZE=str(le.world_size),
                      LOCAL_RANK=str(le.local_rank), MASTER_ADDR=le.master_addr,
                      MASTER_PORT=str(le.master_port))
