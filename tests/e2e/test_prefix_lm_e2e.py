"""pretrain_gpt.py --prefix-lm --loss-on-targets-only on real text: the loss falls, and the
per-step losses (fp32, same seed and data) are the same on 1 process, with PP 2 (the prefix
lengths travel between pipeline stages) and with TP 2 on 2 processes."""
import pytest

from cli_runner import losses, pretrain

pytestmark = pytest.mark.slow

FLAGS = ("--prefix-lm", "--loss-on-targets-only", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "8", "--eval-iters", "1",
         "--eval-interval", "100")


@pytest.fixture(scope="module")
def single(tiny_data):
    curve = losses(pretrain(tiny_data, 1, *FLAGS).stdout)
    assert sorted(curve) == list(range(1, 9))
    return curve


def test_prefix_lm_loss_falls(single):
    assert single[8] < single[1] - 0.1 and max(single[7], single[8]) < min(single[1], single[2])


@pytest.mark.parametrize("flags", [("--pipeline-model-parallel-size", "2"),
                                   ("--tensor-model-parallel-size", "2")])
def test_prefix_lm_same_losses_on_2_processes(tiny_data, single, flags):
    got = losses(pretrain(tiny_data, 2, *FLAGS, *flags).stdout)
    assert sorted(got) == sorted(single)
    for i in single:
        assert got[i] == pytest.approx(single[i], rel=1e-4, abs=1e-4)
