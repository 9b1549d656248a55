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


def test_profile_window_writes_trace_and_operator_table(tmp_path):
    """--profile --use-pytorch-profiler (Megatron-LM's flags) through the benchmark: steps 2-3
    are recorded; the trace holds the model's matmuls; tools/profile_gaps.py refuses a trace
    without GPU activity by name."""
    prof = tmp_path / "prof"
    out = run([sys.executable, "tools/benchmark.py", "--preset", "tiny", "--steps", "2",
               "--warmup", "2", "--data-dir", str(tmp_path), "--", "--profile",
               "--use-pytorch-profiler", "--profile-step-start", "1", "--profile-step-end", "3",
               "--profile-dir", str(prof)]).stdout
    assert f"profile written: {prof / 'trace_rank0.json'}" in out
    table = (prof / "ops_rank0.txt").read_text()
    assert table.startswith("steps 2-3 (2 steps), rank 0")
    assert "aten::mm" in table or "aten::addmm" in table
    trace = json.loads((prof / "trace_rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"aten::mm", "aten::addmm"} & names
    gaps = run([sys.executable, "tools/profile_gaps.py", str(prof / "trace_rank0.json")],
               check=False)
    assert gaps.returncode != 0 and "no GPU activity" in gaps.stderr


def test_profile_window_must_be_ordered(tmp_path):
    out = run([sys.executable, "tools/benchmark.py", "--preset", "tiny", "--steps", "1",
               "--warmup", "1", "--data-dir", str(tmp_path), "--", "--profile",
               "--profile-step-start", "3", "--profile-step-end", "3"], check=False)
    assert out.returncode != 0
    assert "--profile-step-start 3 and --profile-step-end 3: need 0 <= start < end" in out.stderr
