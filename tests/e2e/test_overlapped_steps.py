"""The loop queues step N + 1 before it reads step N's results (Trainer.overlap_steps): it must log
exactly what reading each step's results at once logs (losses, LR, skips, gradient and
parameter norms, progress), through batch-size rampup, a skipped iteration, evaluation and a
checkpoint, with our bf16 optimizer (whose skip decision stays on the device)."""
import pytest

from cli_runner import ROOT, pretrain_cmd
from distributed import run_on_ranks

pytestmark = pytest.mark.slow

TIMING = ("step ms", "tokens/s", "logged at")


def _history(rank, world_size, argv, overlap):
    import pretrain_gpt
    from megatron.trainer.loop import Trainer
    Trainer.overlap_steps = overlap
    return pretrain_gpt.main(argv).history


def test_overlapped_steps_log_what_synchronous_steps_log(tiny_data, tmp_path):
    runs = {}
    for overlap in (False, True):
        cmd = pretrain_cmd(
            tiny_data, 1, "--micro-batch-size", "2", "--global-batch-size", "8",
            "--rampup-batch-size", "4", "4", "24", "--train-samples", "80",  # 13 steps
            "--lr-warmup-iters", "0", "--lr-warmup-samples", "16", "--log-interval", "2",
            "--eval-interval", "5", "--eval-iters", "1", "--skip-train-iteration-range", "9-9",
            "--log-params-norm", "--bf16", "--deepspeed_config",
            str(ROOT / "ds_configs/zero1_bf16.json"), "--save", str(tmp_path / str(overlap)),
            "--save-interval", "6")
        argv = cmd[cmd.index("pretrain_gpt.py") + 1:]
        [history] = run_on_ranks(_history, 1, args=(argv, overlap), timeout=300)
        runs[overlap] = [{k: v for k, v in entry.items() if k not in TIMING}
                         for entry in history]
    logged = [e["iteration"] for e in runs[True] if "loss" in e]
    assert logged == [2, 4, 6, 8, 10, 12, 13]
    consumed = {e["iteration"]: e["consumed samples"] for e in runs[True] if "loss" in e}
    assert consumed == {2: 8, 4: 16, 6: 24, 8: 40, 10: 56, 12: 72, 13: 80}  # 9 read, skipped
    assert any("validation loss" in e for e in runs[True])
    assert runs[True] == runs[False]
