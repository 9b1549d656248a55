"""tools/benchmark.py on CPU (its smoke preset): the BENCHMARK line with tokens/s and, with
--time-split, the step's time in data, forward, backward and optimizer."""
import json
import sys

import pytest

from cli_runner import run

pytestmark = pytest.mark.slow


def test_tiny_preset_reports_throughput_and_time_split(tmp_path):
    out = run([sys.executable, "tools/benchmark.py", "--preset", "tiny", "--steps", "4",
               "--warmup", "2", "--time-split", "--data-dir", str(tmp_path),
               "--json", str(tmp_path / "r.json")]).stdout
    line = [x for x in out.splitlines() if x.startswith("BENCHMARK ")][-1]
    result = json.loads(line[len("BENCHMARK "):])
    assert result["tokens_per_s"] > 0 and result["world_size"] == 1
    split = result["split_ms"]
    assert sorted(split) == ["backward", "data", "forward", "optimizer"]
    assert all(v > 0 for v in split.values())
    assert sum(split.values()) <= result["step_ms"] * 1.05  # the phases fit in the step
    assert json.loads((tmp_path / "r.json").read_text())["split_ms"] == split
