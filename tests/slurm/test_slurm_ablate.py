"""tools/ablate.py --launcher slurm --submit on the real local SLURM cluster: a 2-variant grid
at one FLOP budget runs as two sbatch jobs (examples/slurm/common.sh), then --collect-only
builds the table from the jobs' logs."""
import csv
import json
import math
import re
import sys

import pytest

from cli_runner import run

pytestmark = pytest.mark.slow

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "8", "--global-batch-size", "8",
        "--lr", "3e-3", "--lr-warmup-iters", "2", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--eval-iters", "1", "--deepspeed_config",
        "ds_configs/zero1.json", "--mock-data", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", "500"]


def test_ablation_grid_runs_as_slurm_jobs_and_collects(slurm, tmp_path):
    out_dir = tmp_path / "abl"
    common = ["tools/ablate.py", "--output", str(out_dir), "--budget-flops", "2e9",
              "--launcher", "slurm", "--slurm-nodes", "1", "--slurm-tasks-per-node", "1",
              "--slurm-gpus-per-node", "0", "--slurm-cpus-per-task", "1",
              "--slurm-time", "00:10:00",
              "--variant", "learned=--position-embedding-type learned_absolute",
              "--variant", "alibi=--position-embedding-type alibi"]
    env = {"SLURM_CONF": slurm.env["SLURM_CONF"], "PYTHON": sys.executable}
    out = run([sys.executable, *common, "--submit", "--", *TINY], env=env)
    jobs = dict(re.findall(r"\[ablate\] submitted (\S+): job (\d+)", out.stdout))
    assert set(jobs) == {"learned", "alibi"}, out.stdout
    plan = {p["name"]: p for p in json.loads((out_dir / "plan.json").read_text())}
    for name, job in jobs.items():
        assert (out_dir / name / "job_id").read_text().strip() == job
        info = slurm.wait(job, timeout=300, log=out_dir / name / f"abl-{name}-{job}.out")
        log = (out_dir / name / f"abl-{name}-{job}-run0.log").read_text()
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
        assert f"iteration {plan[name]['steps']}/{plan[name]['steps']}" in log
    out = run([sys.executable, *common, "--collect-only", "--", *TINY], env=env)
    assert "sbatch" not in out.stdout and "submitted" not in out.stdout
    rows = {r["run"]: r for r in csv.DictReader(open(out_dir / "results.csv"))}
    assert set(rows) == {"learned", "alibi"}
    for name, r in rows.items():
        assert r["status"] == "collected", r
        assert int(r["steps"]) == plan[name]["steps"] and abs(float(r["budget_error_pct"])) <= 2
        assert math.isfinite(float(r["val_loss"])) and float(r["val_loss"]) < math.log(512)
        assert math.isfinite(float(r["train_loss"]))
        assert (out_dir / name / "checkpoints" / "latest").read_text().strip() == \
            f"global_step{plan[name]['steps']}"
    md = (out_dir / "results.md").read_text()
    assert md.startswith("| run |") and "| learned |" in md and "| alibi |" in md
    assert (out_dir / "loss_vs_tokens.png").stat().st_size > 5000
