"""A real SLURM for tests: start/stop `local_cluster.sh`, submit sbatch files, poll jobs.

Accounting is off, so job state comes from `scontrol show job`; every wait has a deadline and
cancels the job when it passes (a PENDING job must not hang the suite).
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("local_cluster.sh")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def unavailable_reason():
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"SLURM binaries missing ({', '.join(missing)}); install them with "
                f"`apt-get install -y slurm-wlm munge`")
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd and munged)"
    return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(n: int) -> int:
    """First of n consecutive free TCP ports."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free ports for the local SLURM cluster")


class Cluster:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.env = None

    def start(self) -> "Cluster":
        base = _free_ports(3)
        env = dict(os.environ, SLURMCTLD_PORT=str(base), SLURMD_PORT_BASE=str(base + 1))
        out = subprocess.run(["bash", str(SCRIPT), "start", str(self.dir)], env=env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"local SLURM did not start:\n{out.stdout}\n{out.stderr}")
        # jobs inherit this environment: keep this process's launcher variables out of it
        self.env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        self.env["SLURM_CONF"] = str(self.dir / "slurm.conf")
        return self

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.dir)], capture_output=True,
                       timeout=60)

    def cmd(self, *args: str, timeout: float = 30) -> str:
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def submit(self, script: str, *sbatch_args: str, env: dict | None = None) -> str:
        full_env = dict(self.env, **(env or {}))
        out = subprocess.run(["sbatch", "--parsable", *sbatch_args, script], cwd=ROOT,
                             env=full_env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        line = self.cmd("scontrol", "show", "job", "-o", job_id)
        return dict(f.split("=", 1) for f in line.split() if "=" in f)

    def wait(self, job_id: str, timeout: float, log: Path | None = None,
             min_restarts: int = 0) -> dict:
        """Poll until the job ends (after at least min_restarts requeues); scancel on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in TERMINAL and int(info.get("Restarts", 0)) >= min_restarts:
                return info
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], env=self.env, timeout=30)
                tail = log.read_text()[-3000:] if log and log.exists() else ""
                raise AssertionError(f"job {job_id} still {info['JobState']} (reason "
                                     f"{info.get('Reason')}) after {timeout:.0f}s: cancelled\n"
                                     f"{tail}")
            time.sleep(0.5)

    def wait_for_text(self, job_id: str, path: Path, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (path.exists() and text in path.read_text()):
            info = self.job(job_id)
            if info["JobState"] in TERMINAL or time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], env=self.env, timeout=30)
                tail = path.read_text()[-3000:] if path.exists() else "(no log)"
                raise AssertionError(f"job {job_id} ({info['JobState']}): {text!r} did not "
                                     f"appear in {path} within {timeout:.0f}s\n{tail}")
            time.sleep(0.2)
