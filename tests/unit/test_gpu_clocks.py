"""tools/gpu_clocks.py: nvidia-smi's samples parsed, summarised over a window, and sampled
from a child process (a fake nvidia-smi here: the CPU machine has none)."""
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_clocks  # noqa: E402

# nvidia-smi --query-gpu=<FIELDS> --format=csv,noheader,nounits, as an H100 prints them
CAPPED = "2026/11/27 07:10:01.081, 1650, 1980, 695.31, 700.00, 55, 0x0000000000000004"
COOL = "2026/11/27 07:09:26.047, 1980, 1980, 122.30, 700.00, 38, 0x0000000000000000"

FAKE_SMI = textwrap.dedent("""\
    #!{python}
    import sys, time
    from datetime import datetime
    assert any(a.startswith("--query-gpu=") for a in sys.argv), sys.argv
    for _ in range(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0):  # a backlog first
        print("2026/01/01 00:00:00.000, 1980, 1980, 100.0, 700.00, 40, 0x0000000000000000")
    i = 0
    while True:  # every other sample power-capped at 1600 MHz, the others cool at 1980
        t = datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
        capped = i % 2 == 0
        print(f"{{t}}, {{1600 if capped else 1980}}, 1980, {{690.0 if capped else 120.0}}, "
              f"700.00, 50, {{'0x0000000000000004' if capped else '0x0000000000000000'}}",
              flush=True)
        i += 1
        time.sleep(0.05)
    """)


def test_parse_line_reads_every_field_and_skips_what_it_cannot_read():
    s = gpu_clocks.parse_line(CAPPED)
    assert (s["sm_mhz"], s["sm_max_mhz"], s["power_w"], s["power_limit_w"], s["temp_c"]) == \
        (1650.0, 1980.0, 695.31, 700.0, 55.0)
    assert s["reasons"] & gpu_clocks.POWER_CAP
    assert gpu_clocks.parse_line(COOL)["t"] - s["t"] == pytest.approx(-35.034)
    assert gpu_clocks.parse_line(CAPPED.replace("695.31", "[N/A]")) is None
    assert gpu_clocks.parse_line("2026/11/27 07:10:01.081, 1650") is None


def test_summarize_takes_means_over_the_window_only():
    cool, capped = gpu_clocks.parse_line(COOL), gpu_clocks.parse_line(CAPPED)
    samples = [dict(cool, t=0.0), dict(capped, t=1.0), dict(capped, t=2.0, sm_mhz=1550.0),
               dict(cool, t=3.0)]
    whole = gpu_clocks.summarize(samples)
    assert whole["samples"] == 4 and whole["power_capped_pct"] == 50.0
    assert whole["sm_clock_mhz"] == pytest.approx((1980 + 1650 + 1550 + 1980) / 4)
    window = gpu_clocks.summarize(samples, 0.5, 2.5)
    assert window["samples"] == 2 and window["power_capped_pct"] == 100.0
    assert window["sm_clock_mhz"] == 1600.0 and window["sm_clock_min_mhz"] == 1550.0
    assert window["power_w"] == pytest.approx(695.31) and window["sm_clock_max_mhz"] == 1980.0
    assert window["thermal_slowdown_pct"] == 0.0
    assert gpu_clocks.summarize(samples, 5.0) is None
    assert "power-capped 100%" in gpu_clocks.format_summary(window)


@pytest.fixture
def fake_smi(tmp_path):
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir()
    path.write_text(FAKE_SMI.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_sampler_collects_samples_from_its_child_process(fake_smi):
    sampler = gpu_clocks.ClockSampler(command=[str(fake_smi), "--query-gpu=x"])
    assert sampler.start()
    time.sleep(1.5)  # the fake's interpreter starts first (slowly on a loaded CI machine)
    samples = sampler.stop()
    assert len(samples) >= 5
    summary = gpu_clocks.summarize(samples)
    assert 30 <= summary["power_capped_pct"] <= 70
    assert 1600 < summary["sm_clock_mhz"] < 1980 and summary["sm_clock_min_mhz"] == 1600


def test_sampler_keeps_sampling_after_a_long_backlog(fake_smi):
    """Far more output than a pipe buffer holds (about 7 MB here, hours of nvidia-smi samples)
    must not stall the sampler: the last second is still sampled."""
    sampler = gpu_clocks.ClockSampler(command=[str(fake_smi), "--query-gpu=x", "100000"])
    assert sampler.start()
    time.sleep(2.0)
    start = time.time()
    time.sleep(1.0)
    samples = sampler.stop()
    assert len(samples) > 100000
    assert gpu_clocks.summarize(samples, start)["samples"] >= 5


def test_sampler_without_nvidia_smi_starts_nothing(tmp_path):
    sampler = gpu_clocks.ClockSampler(command=[str(tmp_path / "no-such-nvidia-smi")])
    assert not sampler.start()
    assert sampler.stop() == []


def test_cli_wraps_a_command_and_reports_the_clocks(fake_smi):
    env = dict(os.environ, PATH=f"{fake_smi.parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/gpu_clocks.py"), "--interval-ms", "50", "--",
         sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(3)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3  # the wrapped command's exit status
    assert "GPU SM clock" in out.stdout and "power-capped" in out.stdout
    assert "of 700 W" not in out.stdout and "W of 700" in out.stdout


def test_cli_without_a_command_says_so():
    out = subprocess.run([sys.executable, str(ROOT / "tools/gpu_clocks.py"), "--gpu", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give the command to watch after --" in out.stderr
