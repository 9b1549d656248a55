"""tools/average_checkpoints.py on real checkpoints: the output is the mean and it loads."""
import sys

import pytest
import torch

from cli_runner import losses, pretrain, run

pytestmark = pytest.mark.slow


def test_average_of_last_checkpoints_is_their_mean_and_resumes(tiny_data, tmp_path):
    ck, avg = tmp_path / "ck", tmp_path / "avg"
    pretrain(tiny_data, 2, "--micro-batch-size", "2", "--global-batch-size", "4",
             "--tensor-model-parallel-size", "2", "--train-iters", "6", "--save", str(ck),
             "--save-interval", "2")
    out = run([sys.executable, "tools/average_checkpoints.py", "--load", str(ck), "--last", "2",
               "--output", str(avg)])
    assert "averaged 2 checkpoints (global_step4, global_step6)" in out.stdout
    for rank in (0, 1):  # each TP shard averaged with its own kind
        name = f"mp_rank_0{rank}_model_states.pt"
        a, b, m = (torch.load(d / name, weights_only=False)["module"] for d in
                   (ck / "global_step4", ck / "global_step6", avg / "global_step6"))
        assert set(m) == set(a)
        for k, v in m.items():
            if torch.is_tensor(v) and v.is_floating_point():
                assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-7), k
    resumed = pretrain(tiny_data, 2, "--micro-batch-size", "2", "--global-batch-size", "4",
                       "--tensor-model-parallel-size", "2", "--train-iters", "8",
                       "--load", str(avg), "--no-load-optim", check=True)
    assert sorted(losses(resumed.stdout)) == [7, 8]
    again = run([sys.executable, "tools/average_checkpoints.py", "--load", str(ck), "--last",
                 "2", "--output", str(avg)], check=False)
    assert again.returncode != 0 and "exists" in again.stderr
