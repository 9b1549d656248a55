"""sbatch of examples/slurm/tiny_cpu.sbatch on a real (local, 2-node) SLURM: training, a
preemption that saves, requeues and resumes exactly, and a failing rank that fails the job."""
import re
import sys

import pytest

from cli_runner import losses
from slurm_cluster import ROOT

pytestmark = pytest.mark.slow

RECIPE = "examples/slurm/tiny_cpu.sbatch"
ITERS = 200  # long enough (~10 s) to signal the job mid-run


def submit_tiny(slurm, tmp_path, name, **env):
    out = tmp_path / f"{name}.out"
    job = slurm.submit(RECIPE, f"--output={out}", f"--job-name={name}", env=dict(
        PYTHON=sys.executable, CKPT=str(tmp_path / "ck"), LOG_DIR=str(tmp_path),
        TRAIN_ITERS=str(ITERS), SAVE_INTERVAL="1000", **env))
    return job, out


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    job, out = submit_tiny(slurm, tmp, "tiny")
    info = slurm.wait(job, timeout=300, log=out)
    return job, info, out, tmp


def test_tiny_recipe_trains_on_two_nodes_logs_and_saves(uninterrupted):
    job, info, out, tmp = uninterrupted
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert info["NodeList"] == "node[1-2]" and info["NumNodes"] == "2"
    assert "rendezvous 127.0.0.1:" in log  # MASTER_ADDR from the first node's NodeAddr
    assert "layout TP1 x PP1 x DP2 = 2 ranks" in log
    curve = losses(log)
    assert sorted(curve) == list(range(1, ITERS + 1))
    assert curve[ITERS] < curve[1] - 0.3, curve  # it learns
    assert (tmp / "ck" / "latest").read_text().strip() == f"global_step{ITERS}"
    assert (tmp / f"tiny-{job}-run0.log").exists() and (tmp / "ck" / "tensorboard").is_dir()


def test_preempted_job_saves_requeues_and_resumes_exactly(slurm, uninterrupted, tmp_path):
    job, out = submit_tiny(slurm, tmp_path, "tiny-preempt")
    run0 = tmp_path / f"tiny-preempt-{job}-run0.log"
    slurm.wait_for_text(job, run0, "iteration 20/", timeout=240)
    slurm.cmd("scancel", "--signal=USR1", job)  # what --signal=USR1@60 sends before the limit
    info = slurm.wait(job, timeout=300, log=out, min_restarts=1)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert info["Restarts"] == "1", log[-3000:]
    stop = re.search(r"stopping at iteration (\d+): SIGUSR1", run0.read_text())
    assert stop, run0.read_text()[-3000:]
    k = int(stop.group(1))
    assert 20 <= k < ITERS
    assert f"saved checkpoint {tmp_path / 'ck'}/global_step{k}" in log
    assert f"requeueing job {job}" in log
    run1 = (tmp_path / f"tiny-preempt-{job}-run1.log").read_text()
    assert f"resumed from {tmp_path / 'ck'}/global_step{k}: iteration {k}" in run1
    before, after = losses(run0.read_text()), losses(run1)
    assert max(before) == k and min(after) == k + 1 and max(after) == ITERS
    assert {**before, **after} == losses(uninterrupted[2].read_text())  # same curve, exactly


def test_failing_rank_fails_the_job_with_its_error(slurm, tmp_path):
    job, out = submit_tiny(slurm, tmp_path, "tiny-crash",
                           TRAIN_SCRIPT=str(ROOT / "tests/slurm/crash_rank.py"))
    info = slurm.wait(job, timeout=180, log=out)
    log = out.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", log[-3000:]
    assert "RuntimeError: injected failure on rank 1 at iteration 3" in log
    assert info["Restarts"] == "0" and "requeueing" not in log
