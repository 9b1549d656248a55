"""Where the GPU waits: idle gaps in a torch.profiler Chrome trace, and the CPU work during them.

    python tools/profile_gaps.py profile/trace_rank0.json [--steps 2] [--min-gap-us 20]

Reads a trace written by `pretrain_gpt.py --profile --use-pytorch-profiler` (or any
torch.profiler trace with CUDA activity). GPU activity = kernels, memcpys and memsets; the
complement inside the profiled window is idle time. Each gap is attributed to the shortest CPU
operator (or CUDA runtime call) that covers at least half of it, else to the one that overlaps
it most: that names what the GPU was waiting for (a host sync, Python between launches, a
pageable copy). Prints GPU busy/idle per step, idle time by attributed operator, and the largest
gaps.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
CPU_CATS = {"cpu_op", "cuda_runtime", "cuda_driver", "user_annotation", "python_function"}


def load_events(path: str) -> tuple[list, list]:
    """(GPU intervals, CPU events) as (start_us, end_us[, name]) from a Chrome trace."""
    with open(path) as f:
        trace = json.load(f)
    gpu, cpu = [], []
    for e in trace.get("traceEvents", trace if isinstance(trace, list) else []):
        if e.get("ph") != "X" or "dur" not in e:
            continue
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        cat = e.get("cat", "")
        if cat in GPU_CATS:
            gpu.append((start, end))
        elif cat in CPU_CATS and not e.get("name", "").startswith("ProfilerStep"):
            cpu.append((start, end, e.get("name", "?")))
    return gpu, cpu


def merged(intervals: list) -> list:
    """Sorted, non-overlapping [start, end] covering the same time as (start, end) intervals."""
    out: list = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def idle_gaps(gpu: list, min_gap_us: float) -> tuple[float, float, list]:
    """(busy us, window us, [(gap start, gap end)]) of the merged GPU intervals."""
    if not gpu:
        raise ValueError("the trace has no GPU activity (kernels, memcpys, memsets)")
    spans = merged(gpu)
    gaps = [(a[1], b[0]) for a, b in zip(spans, spans[1:]) if b[0] - a[1] >= min_gap_us]
    return sum(e - s for s, e in spans), spans[-1][1] - spans[0][0], gaps


def attribute(gap: tuple, cpu: list) -> str:
    start, end = gap
    length = end - start
    overlapping = [(min(end, e) - max(start, s), e - s, name) for s, e, name in cpu
                   if s < end and e > start]
    if not overlapping:
        return "(no CPU event)"
    covering = [o for o in overlapping if o[0] >= 0.5 * length]
    if covering:
        return min(covering, key=lambda o: o[1])[2]
    return max(overlapping, key=lambda o: o[0])[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=1, help="Steps the trace covers (for per-step "
                   "figures).")
    p.add_argument("--min-gap-us", type=float, default=20.0, help="Shorter gaps are ignored.")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    try:
        gpu, cpu = load_events(args.trace)
        busy, window, gaps = idle_gaps(gpu, args.min_gap_us)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"profile_gaps.py: {args.trace}: {e}", file=sys.stderr)
        return 2
    cpu.sort()
    by_name: dict[str, float] = defaultdict(float)
    labelled = []
    for gap in gaps:
        name = attribute(gap, cpu)
        by_name[name] += gap[1] - gap[0]
        labelled.append((gap[1] - gap[0], gap[0] - gpu[0][0] if gpu else 0.0, name))
    idle = window - busy
    n = args.steps
    print(f"window {window / 1e3 / n:.2f} ms/step: GPU busy {busy / 1e3 / n:.2f}, idle "
          f"{idle / 1e3 / n:.2f} ms/step ({100 * idle / window:.1f}%); "
          f"{len(gaps)} gaps >= {args.min_gap_us:g} us hold {sum(g[0] for g in labelled) / 1e3 / n:.2f} ms/step")
    print("\nidle ms/step by what the CPU was doing:")
    for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {us / 1e3 / n:8.3f}  {name[:100]}")
    print("\nlargest gaps (us, at ms into the window, attributed to):")
    for length, at, name in sorted(labelled, reverse=True)[:args.top]:
        print(f"  {length:9.1f}  {at / 1e3:9.2f}  {name[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
