"""Resume on another layout: a checkpoint saved at TP 2 x PP 2 goes through
tools/checkpoint_to_universal.py and resumes at TP 1 x PP 1 and at TP 1 x PP 2 with its fp32
master weights and Adam moments: the following steps' losses equal the original run's (fp32,
within the float-sum differences between layouts). bf16 checkpoints cross between our
fp32-master AdamW (1 rank) and DeepSpeed's BF16_Optimizer (DP 2) the same way."""
import sys

import pytest

from cli_runner import losses, pretrain, run

pytestmark = pytest.mark.slow

FLAGS = ("--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", "8",
         "--lr-warmup-iters", "2", "--eval-interval", "1000", "--eval-iters", "1")


def _train_and_convert(tiny_data, d, nproc):
    """8 steps at TP 2 x PP 2 (x DP nproc / 4) saving at step 4, and step 4 made universal on
    the same number of processes: (the run's losses, the universal checkpoint)."""
    out = pretrain(tiny_data, nproc, *FLAGS, "--tensor-model-parallel-size", "2",
                   "--pipeline-model-parallel-size", "2", "--save", str(d / "ck"),
                   "--save-interval", "4").stdout
    assert f"layout TP2 x PP2 x DP{nproc // 4} = {nproc} ranks" in out
    conv = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}", "tools/checkpoint_to_universal.py", "--load",
                str(d / "ck"), "--tag", "global_step4", "--save", str(d / "uni")]).stdout
    assert "iteration 4, Adam step 4" in conv, conv[-2000:]
    return losses(out), d / "uni"


@pytest.fixture(scope="module")
def original(tiny_data, tmp_path_factory):
    return _train_and_convert(tiny_data, tmp_path_factory.mktemp("reshape"), 4)


@pytest.mark.parametrize("nproc, layout", [(1, ()), (2, ("--pipeline-model-parallel-size",
                                                          "2"))])
def test_universal_checkpoint_resumes_the_curve_on_another_layout(tiny_data, original, nproc,
                                                                  layout):
    curve, uni = original
    out = pretrain(tiny_data, nproc, *FLAGS, *layout, "--universal-checkpoint", "--load",
                   str(uni)).stdout
    assert f"resumed from universal checkpoint {uni}/global_step4: iteration 4, 32 samples" in out
    after = losses(out)
    assert sorted(after) == [5, 6, 7, 8]
    for i in after:  # step 5 checks the weights; 6-8 the moments and the Adam step count too
        assert after[i] == pytest.approx(curve[i], rel=2e-4), (i, after, curve)


def test_wrong_process_count_or_plain_checkpoint_are_clear_errors(tiny_data, original):
    _, uni = original
    ck = uni.parent / "ck"
    conv = run([sys.executable, "tools/checkpoint_to_universal.py", "--load", str(ck), "--save",
                str(uni.parent / "nope")], check=False)
    assert conv.returncode != 0
    assert "was saved by 4 ranks (TP 2 x PP 2 x DP 1); run this with 4 processes, not 1" in \
        conv.stderr
    plain = pretrain(tiny_data, 1, *FLAGS, "--universal-checkpoint", "--load", str(ck),
                     check=False)
    assert plain.returncode != 0
    assert f"--universal-checkpoint --load {ck}: no universal checkpoint there" in plain.stderr


@pytest.fixture(scope="module")
def original_3d(tiny_data, tmp_path_factory):
    return _train_and_convert(tiny_data, tmp_path_factory.mktemp("reshape3d"), 8)


@pytest.mark.parametrize("layout, name", [
    (("--tensor-model-parallel-size", "4"), "TP4 x PP1 x DP2"),
    (("--pipeline-model-parallel-size", "2"), "TP1 x PP2 x DP4"),
])
def test_3d_checkpoint_resumes_at_tp4_dp2_and_pp2_dp4(tiny_data, original_3d, layout, name):
    """Issue 9's reshape on 8 CPU ranks: saved at TP2 x PP2 x DP2, resumed at 8 ranks on two
    other layouts; the following losses continue the curve."""
    curve, uni = original_3d
    out = pretrain(tiny_data, 8, *FLAGS, *layout, "--universal-checkpoint", "--load",
                   str(uni)).stdout
    assert f"layout {name} = 8 ranks" in out
    after = losses(out)
    assert sorted(after) == [5, 6, 7, 8]
    for i in after:
        assert after[i] == pytest.approx(curve[i], rel=2e-4), (i, after, curve)


BF16 = ("--bf16", "--deepspeed_config", "ds_configs/zero1_bf16.json")


@pytest.mark.parametrize("saved, resumed", [(1, 2), (2, 1)])
def test_bf16_optimizers_cross_through_universal_checkpoints(tiny_data, tmp_path, saved, resumed):
    """bf16 on 1 rank runs our fp32-master AdamW (--bf16-optimizer auto), at DP 2 DeepSpeed's
    BF16_Optimizer: a checkpoint of either, made universal, resumes under the other with its
    masters and moments, and the curve goes on."""
    out = pretrain(tiny_data, saved, *FLAGS, *BF16, "--save", str(tmp_path / "ck"),
                   "--save-interval", "4").stdout
    assert ("MasterWeightAdamW" if saved == 1 else "BF16_Optimizer") in out
    run([sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={saved}", "tools/checkpoint_to_universal.py", "--load",
         str(tmp_path / "ck"), "--tag", "global_step4", "--save", str(tmp_path / "uni")])
    after = pretrain(tiny_data, resumed, *FLAGS, *BF16, "--universal-checkpoint", "--load",
                     str(tmp_path / "uni")).stdout
    assert ("MasterWeightAdamW" if resumed == 1 else "BF16_Optimizer") in after
    curve, resumed_curve = losses(out), losses(after)
    assert sorted(resumed_curve) == [5, 6, 7, 8]
    for i in resumed_curve:
        assert resumed_curve[i] == pytest.approx(curve[i], rel=2e-3), (i, resumed_curve, curve)
