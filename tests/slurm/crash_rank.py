"""pretrain_gpt.py with an injected failure: rank CRASH_RANK (1) raises after step CRASH_AT (3),
while the other ranks wait in the next step's collectives (the failing-rank SLURM test)."""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from megatron.trainer import loop  # noqa: E402

rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
if rank == int(os.environ.get("CRASH_RANK", "1")):
    _should_save_now = loop.Trainer._should_save_now

    def _crash(self):
        if self.progress.iteration >= int(os.environ.get("CRASH_AT", "3")):
            raise RuntimeError(f"injected failure on rank {rank} at iteration "
                               f"{self.progress.iteration}")
        return _should_save_now(self)

    loop.Trainer._should_save_now = _crash
sys.argv[0] = "pretrain_gpt.py"
runpy.run_path("pretrain_gpt.py", run_name="__main__")
