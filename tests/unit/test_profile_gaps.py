"""tools/profile_gaps.py on a hand-made trace: busy time merges overlapping kernels, short gaps
are ignored, and a gap is named after the shortest CPU event covering most of it."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import profile_gaps  # noqa: E402


def _trace(tmp_path):
    ev = [{"ph": "X", "cat": "kernel", "name": "k1", "ts": 0, "dur": 100},
          {"ph": "X", "cat": "kernel", "name": "k2", "ts": 50, "dur": 100},    # busy 0-150
          {"ph": "X", "cat": "kernel", "name": "k3", "ts": 400, "dur": 100},   # gap 150-400
          {"ph": "X", "cat": "gpu_memcpy", "name": "m", "ts": 505, "dur": 95},  # 5 us gap
          {"ph": "X", "cat": "kernel", "name": "k4", "ts": 700, "dur": 100},   # gap 600-700
          {"ph": "X", "cat": "cpu_op", "name": "step", "ts": 0, "dur": 1000},
          {"ph": "X", "cat": "cpu_op", "name": "DataLoader.__next__", "ts": 140, "dur": 300},
          {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 590, "dur": 30},
          {"ph": "X", "cat": "cpu_op", "name": "ProfilerStep#1", "ts": 0, "dur": 1000}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def test_busy_idle_and_gaps():
    gpu = [(0, 100), (50, 150), (400, 500), (505, 600), (700, 800)]
    busy, window, gaps = profile_gaps.idle_gaps(gpu, min_gap_us=20)
    assert (busy, window) == (150 + 100 + 95 + 100, 800)
    assert gaps == [(150, 400), (600, 700)]


def test_gaps_are_named_after_the_cpu_work_under_them(tmp_path, capsys):
    assert profile_gaps.main([str(_trace(tmp_path)), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPU busy 0.22, idle 0.18 ms/step" in out
    lines = out.splitlines()
    by_name = lines[lines.index("idle ms/step by what the CPU was doing:") + 1:][:2]
    # 250 us under the loader's 300 us event (it covers more than half: the shortest such);
    # the 100 us gap has only the whole-step op covering it (aten::item overlaps 20 us)
    assert by_name[0].split() == ["0.125", "DataLoader.__next__"]
    assert by_name[1].split() == ["0.050", "step"]


def test_unreadable_trace_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert profile_gaps.main([str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
