"""tools/profile_kernels.py on a hand-made trace: kernels sorted into kinds by name, busy time
of compute and communication merged, and the communication that no compute overlapped."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import profile_kernels  # noqa: E402

KERNELS = [  # (ts, dur, name)
    (0, 100, "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NTT"),
    (50, 100, "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16"),  # compute 0-150
    (120, 80, "ncclDevKernel_AllReduce_Sum_f32_RING_LL"),  # 30 us beside compute, 50 exposed
    (300, 40, "ncclDevKernel_AllReduce_Sum_bf16_RING_LL"),  # 30 us exposed
    (330, 50, "_adamw_bf16_tensor"),  # covers the last 10 us of the one above
    (400, 10, "Memcpy HtoD (Pinned -> Device)"),
    (410, 20, "triton_poi_fused_gelu_view_2"),
    (430, 20, "void at::native::reduce_kernel<128, 4>"),
]


def _trace(tmp_path):
    ev = [{"ph": "X", "cat": "kernel", "name": n, "ts": t, "dur": d} for t, d, n in KERNELS]
    ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 500})  # not GPU
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def test_kinds_busy_time_and_exposed_communication(tmp_path):
    s = profile_kernels.summarize(profile_kernels.load_kernels(str(_trace(tmp_path))))
    assert s["kinds"] == {"matmul": (100, 1), "attention": (100, 1), "communication": (120, 2),
                          "optimizer": (50, 1), "copy": (10, 1), "fused": (20, 1),
                          "other": (20, 1)}
    assert s["compute_us"] == 150 + 50 + 10 + 20 + 20
    assert s["communication_us"] == 80 + 40
    assert s["exposed_us"] == 50 + 30
    assert s["window_us"] == 450


def test_prints_per_step_figures(tmp_path, capsys):
    assert profile_kernels.main([str(_trace(tmp_path)), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "communication busy 0.06, of it beside no compute (exposed) 0.04" in out
    assert "    0.06           1.0  communication" in out


def test_a_trace_without_gpu_activity_is_refused(tmp_path, capsys):
    path = tmp_path / "cpu_only.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "x",
                                                 "ts": 0, "dur": 1}]}))
    assert profile_kernels.main([str(path)]) == 2
    assert "no GPU activity" in capsys.readouterr().err
