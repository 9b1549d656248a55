"""Run the project's command-line tools and pretrain_gpt.py in subprocesses, as a user would."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, timeout=600, env=None, check=True):
    # no launcher variables of this process leak in (torchrun or the child picks its own)
    full_env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    full_env.update(OMP_NUM_THREADS="1", **(env or {}))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env=full_env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                             f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LOG_LINE = re.compile(r"iteration (\d+)/\d+ \|.*?\| loss ([0-9.]+) \|")


VALID_LINE = re.compile(r"validation loss at iteration (\d+) \| lm loss ([0-9.]+)")


def losses(stdout: str) -> dict[int, float]:
    return {int(i): float(v) for i, v in LOG_LINE.findall(stdout)}


def validation_losses(stdout: str) -> dict[int, float]:
    """{iteration: validation lm loss} of a pretrain_gpt.py log."""
    return {int(i): float(v) for i, v in VALID_LINE.findall(stdout)}


def pretrain(data, nproc, *flags, timeout=600, env=None, check=True, data_flags=None):
    """A tiny run on `data` (tests/e2e's tiny_data); `data_flags` replace --data-path/--split."""
    return run(pretrain_cmd(data, nproc, *flags, data_flags=data_flags), timeout=timeout,
               env=env, check=check)


def pretrain_cmd(data, nproc, *flags, data_flags=None, script="pretrain_gpt.py") -> list:
    """The torchrun command line of `pretrain` (`script` in place of pretrain_gpt.py)."""
    if data_flags is None:
        data_flags = ("--data-path", data["prefix"], "--split", "90,9,1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", script,
           "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
           "--seq-length", "32", "--lr", "3e-3", "--lr-warmup-iters", "2",
           "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
           *data_flags,
           "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data["spm"],
           "--deepspeed_config", "ds_configs/zero1.json", *flags]
