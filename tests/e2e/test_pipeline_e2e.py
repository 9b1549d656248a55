"""pretrain_gpt.py with pipeline parallelism on real text: per-step training losses (and, with
DP 1, the validation loss) match the single-process run (fp32, same seed and data); PP 2 with
activation checkpointing on 2 processes, TP 2 x PP 2 x DP 2 on 8."""
import re

import pytest

from cli_runner import losses, pretrain, validation_losses

pytestmark = pytest.mark.slow

COMMON = ("--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", "4",
          "--eval-iters", "1", "--eval-interval", "100", "--log-params-norm")
PARAMS_NORM = re.compile(r"params norm ([0-9.E+-]+)")


def _run(tiny_data, nproc, *flags):
    out = pretrain(tiny_data, nproc, *COMMON, *flags).stdout
    return out, losses(out), validation_losses(out)[4]


def _assert_same(single, other, same_validation=True):
    (out, curve, valid), (got_out, got, got_valid) = single, other
    assert sorted(got) == sorted(curve) == [1, 2, 3, 4]
    norms = [float(x) for x in PARAMS_NORM.findall(out)]
    assert len(norms) == 4  # every parameter counted once, whatever the layout
    assert [float(x) for x in PARAMS_NORM.findall(got_out)] == pytest.approx(norms, rel=2e-3)
    for i in curve:
        assert got[i] == pytest.approx(curve[i], rel=1e-4, abs=1e-4)
    if same_validation:
        assert got_valid == pytest.approx(valid, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def single(tiny_data):
    return _run(tiny_data, 1)


def test_pipeline_parallel_run_matches_single_process(tiny_data, single):
    pp2 = _run(tiny_data, 2, "--pipeline-model-parallel-size", "2", "--checkpoint-activations")
    assert "layout TP1 x PP2 x DP1 = 2 ranks" in pp2[0]
    assert "DeepSpeed topology ['pipe', 'data', 'model'] [2, 1, 1] matches" in pp2[0]
    _assert_same(single, pp2)


def test_3d_run_on_8_processes_matches_single_process(tiny_data, single):
    run = _run(tiny_data, 8, "--tensor-model-parallel-size", "2",
               "--pipeline-model-parallel-size", "2")
    assert "layout TP2 x PP2 x DP2 = 8 ranks" in run[0]
    # --eval-iters counts micro-batches per DP rank, so DP 2 validates on other samples.
    _assert_same(single, run, same_validation=False)


def test_resume_is_exact_under_tp2_pp2_dp2(tiny_data, tmp_path):
    """8 steps in one run == 4 steps, stop, resume for 4, at TP 2 x PP 2 x DP 2: identical
    per-step losses (CPU fp32), across a batch-size rampup boundary and the end of LR warmup,
    with dropout on."""
    flags = ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
             "--micro-batch-size", "2", "--global-batch-size", "8", "--rampup-batch-size",
             "4", "4", "20", "--train-samples", "44", "--lr-warmup-iters", "0",
             "--lr-warmup-samples", "16", "--hidden-dropout", "0.1", "--attention-dropout",
             "0.1", "--eval-interval", "1000", "--eval-iters", "1")
    whole = losses(pretrain(tiny_data, 8, *flags).stdout)
    ck = tmp_path / "ck"
    first = pretrain(tiny_data, 8, *flags, "--save", str(ck), "--exit-interval", "4")
    assert "exiting at iteration 4" in first.stdout
    second = pretrain(tiny_data, 8, *flags, "--load", str(ck))
    assert f"resumed from {ck}/global_step4: iteration 4" in second.stdout
    resumed = {**losses(first.stdout), **losses(second.stdout)}
    assert len(whole) == 8 and whole == resumed
