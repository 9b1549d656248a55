"""tools/benchmark.py on a GPU reports the card's SM clock and power for its timed steps, read
through nvidia-smi for torch's device (tools/gpu_clocks.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_timed_steps_report_clock_and_power(tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--preset", "124m", "--steps", "30", "--warmup",
         "3", "--data-dir", str(tmp_path), "--json", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    clocks = json.loads((tmp_path / "r.json").read_text())["gpu_clocks"]
    assert clocks["samples"] >= 2  # 30 eager 124M steps take well over 0.5 s
    assert 0 < clocks["sm_clock_min_mhz"] <= clocks["sm_clock_mhz"] <= clocks["sm_clock_max_mhz"]
    assert 0 < clocks["power_w"] <= 1.2 * clocks["power_limit_w"]
    assert "GPU during the timed steps: SM clock" in out.stdout
