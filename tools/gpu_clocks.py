"""The GPU's SM clock, power draw and throttle reasons while a run works: is it power-capped?

    python tools/gpu_clocks.py -- python tools/benchmark.py --preset 1.3b   # whole command

tools/benchmark.py uses `ClockSampler` for its timed steps. A long bf16 run on an H100 SXM
holds the card at its power limit (700 W): the driver lowers the SM clock (1545-1785 MHz in
the 1.3B runs of docs/benchmarks.md, against 1980 MHz when cool), so tokens/s follow the energy
a step needs, and a short matmul measured before the run sees higher clocks than the run does.
The sampler runs `nvidia-smi --query-gpu ... -lms N` in a child process (NVML through the
command every driver ships; no Python binding needed) and summarises a wall-time window.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime

FIELDS = ("timestamp", "clocks.sm", "clocks.max.sm", "power.draw", "power.limit",
          "temperature.gpu", "clocks_throttle_reasons.active")
POWER_CAP = 0x4  # SW power cap: the driver lowers clocks to hold the power limit
THERMAL = 0x20 | 0x40  # SW / HW thermal slowdown
HW_SLOWDOWN = 0x8 | 0x80  # HW slowdown / HW power brake


def parse_line(line: str) -> dict | None:
    """One `--format=csv,noheader,nounits` line -> {"t", "sm_mhz", ...}; None if unreadable."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(FIELDS):
        return None
    try:
        return {"t": datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp(),
                "sm_mhz": float(parts[1]), "sm_max_mhz": float(parts[2]),
                "power_w": float(parts[3]), "power_limit_w": float(parts[4]),
                "temp_c": float(parts[5]), "reasons": int(parts[6], 16)}
    except ValueError:  # "[N/A]" fields, a cut-off line
        return None


def summarize(samples: list, start: float | None = None, end: float | None = None) -> dict | None:
    """Means over the samples in [start, end] (wall time, seconds); None if there are none."""
    window = [s for s in samples if (start is None or s["t"] >= start)
              and (end is None or s["t"] <= end)]
    if not window:
        return None
    n = len(window)

    def mean(key):
        return sum(s[key] for s in window) / n

    def pct(mask):
        return 100.0 * sum(1 for s in window if s["reasons"] & mask) / n

    return {"samples": n, "sm_clock_mhz": mean("sm_mhz"),
            "sm_clock_min_mhz": min(s["sm_mhz"] for s in window),
            "sm_clock_max_mhz": window[0]["sm_max_mhz"], "power_w": mean("power_w"),
            "power_limit_w": window[0]["power_limit_w"], "temperature_c": mean("temp_c"),
            "power_capped_pct": pct(POWER_CAP), "thermal_slowdown_pct": pct(THERMAL),
            "hw_slowdown_pct": pct(HW_SLOWDOWN)}


def format_summary(s: dict) -> str:
    return (f"SM clock {s['sm_clock_mhz']:.0f} MHz mean, {s['sm_clock_min_mhz']:.0f} min "
            f"(max {s['sm_clock_max_mhz']:.0f}); power {s['power_w']:.0f} W of "
            f"{s['power_limit_w']:.0f}; power-capped {s['power_capped_pct']:.0f}%, thermal "
            f"slowdown {s['thermal_slowdown_pct']:.0f}% of {s['samples']} samples")


class ClockSampler:
    """Samples one GPU every `interval_ms` until stop(); `command` replaces nvidia-smi (tests)."""

    def __init__(self, gpu: str = "0", interval_ms: int = 250, command: list | None = None):
        self.command = command or ["nvidia-smi", "-i", gpu, "--query-gpu=" + ",".join(FIELDS),
                                   "--format=csv,noheader,nounits", "-lms", str(interval_ms)]
        self.proc = self.out = None

    def start(self) -> bool:
        """Starts sampling; False (and no sampling) where the command cannot run."""
        # into a file, not a pipe: nobody reads until stop(), and a full pipe (64 KiB, a few
        # minutes of samples) would stall the sampler for the rest of a long run
        self.out = tempfile.TemporaryFile(mode="w+")
        try:
            self.proc = subprocess.Popen(self.command, stdout=self.out,
                                         stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None
            self.out.close()
        return self.proc is not None

    def stop(self) -> list:
        """Ends sampling and returns the parsed samples."""
        if self.proc is None:
            return []
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.out.seek(0)
        lines = self.out.read().splitlines()
        self.out.close()
        return [s for s in map(parse_line, lines) if s is not None]


def torch_gpu_id(device_index: int = 0) -> str:
    """nvidia-smi's id (GPU-<uuid>) of torch's cuda:<device_index>, which CUDA_VISIBLE_DEVICES
    may number differently from nvidia-smi; "0" where torch does not say."""
    import torch
    uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else "0"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [--gpu ID] [--interval-ms N] -- COMMAND ...")
    p.add_argument("--gpu", default="0", help="nvidia-smi's index or UUID of the GPU to watch.")
    p.add_argument("--interval-ms", type=int, default=250)
    args = p.parse_args(argv[:split])
    cmd = argv[split + 1:]
    if not cmd:
        p.error("give the command to watch after --")
    sampler = ClockSampler(args.gpu, args.interval_ms)
    if not sampler.start():
        print("gpu_clocks.py: nvidia-smi could not be run", file=sys.stderr)
        return 2
    start = time.time()
    rc = subprocess.call(cmd)
    summary = summarize(sampler.stop(), start)
    print("GPU " + (format_summary(summary) if summary else "no samples"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
