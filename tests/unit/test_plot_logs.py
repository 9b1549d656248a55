import subprocess
import sys

from megatron.trainer.metrics import TensorBoard


def test_plot_logs_draws_curves_from_tensorboard(tmp_path):
    tb = TensorBoard(str(tmp_path / "tb"), enabled=True)
    for step in range(1, 11):
        tb.scalars({"train/loss": 6.0 / step, "train/lr": 1e-3 * step / 10,
                    "train/grad norm": 1.0 + step}, step, step * 8, step * 8 * 128)
    tb.scalars({"validation/lm loss": 2.5}, 10, 80, 80 * 128)
    tb.close()
    out = subprocess.run([sys.executable, "tools/plot_logs.py", str(tmp_path / "tb"), "--x",
                          "tokens", "--output", str(tmp_path / "c.png")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from tools.plot_logs import read_scalars
    scalars = read_scalars(tmp_path / "tb", "tokens")
    assert scalars["train/loss"][0][:2] == [1024, 2048]
    assert scalars["validation/lm loss"] == ([10240], [2.5])


def test_plot_logs_names_a_directory_without_logs(tmp_path):
    out = subprocess.run([sys.executable, "tools/plot_logs.py", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no TensorBoard scalars" in out.stderr
