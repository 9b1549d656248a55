"""The README's first command's main job, end to end: examples/quickstart.sh as written."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from cli_runner import LAUNCH_VARS, ROOT, validation_losses

pytestmark = pytest.mark.slow


def test_quickstart_trains_evaluates_and_beats_40_percent_below_uniform(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    out = subprocess.run(["bash", "examples/quickstart.sh", str(tmp_path / "qs")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout
    assert "tokens/s" in log
    valid = list(validation_losses(log).values())
    assert len(valid) == 3  # at 200, 400 and 600
    assert valid[-1] < 0.6 * math.log(512), valid  # at least 40% below ln(vocab)
    assert valid[-1] < valid[0]
    assert re.search(r"test loss at iteration 600 \| lm loss [0-9.]+ \| lm loss PPL", log)
    run = tmp_path / "qs"
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step600"
    results = json.loads((run / "eval_results.json").read_text())["results"]
    assert 0.0 <= results["stdlib_cloze"]["acc,none"] <= 1.0
    assert results["stdlib_heldout_ppl"]["bits_per_byte,none"] > 0
    assert (run / "curves.png").stat().st_size > 10_000
