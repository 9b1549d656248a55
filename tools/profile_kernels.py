"""GPU time by kind of kernel in a torch.profiler Chrome trace, and how much of the
communication ran beside compute.

    python tools/profile_kernels.py profile/trace_rank0.json [--steps 2] [--top 20]

Reads a trace written by `pretrain_gpt.py --profile --use-pytorch-profiler` (or any
torch.profiler trace with CUDA activity). Each kernel, memcpy and memset is put in one kind by
its name (communication, attention, matmul, optimizer, copy, fused, other: the first rule that
matches); prints ms per step and count per step of each kind, the busy time of compute (all but
communication) and of communication with their intervals merged, the communication time that
no compute kernel overlapped ("exposed"), and the largest kernels by name. Where
tools/profile_gaps.py asks why the GPU idles, this asks what it was busy with: whether a
data-parallel all-reduce hides behind the backward, and what a change made slower.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_gaps import GPU_CATS, merged  # noqa: E402 (the sibling tool)

KINDS = [  # (kind, substrings of the lower-cased name), first match wins
    ("communication", ("nccl",)),
    ("attention", ("sdpa", "flash", "fmha", "attn", "attention", "cudnn")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul")),
    ("optimizer", ("adam", "multi_tensor_apply")),
    ("copy", ("memcpy", "memset", "copy", "fill")),
    ("fused", ("triton",)),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def load_kernels(path: str) -> list:
    """[(start_us, end_us, name)] of the trace's GPU activity."""
    with open(path) as f:
        trace = json.load(f)
    out = []
    for e in trace.get("traceEvents", trace if isinstance(trace, list) else []):
        if e.get("ph") == "X" and "dur" in e and e.get("cat") in GPU_CATS:
            start = float(e["ts"])
            out.append((start, start + float(e["dur"]), e.get("name", "?")))
    if not out:
        raise ValueError("the trace has no GPU activity (kernels, memcpys, memsets)")
    return out


def uncovered(intervals: list, cover: list) -> float:
    """Time of merged `intervals` outside merged `cover` (both sorted)."""
    total, j = 0.0, 0
    for start, end in intervals:
        while j < len(cover) and cover[j][1] <= start:
            j += 1
        covered, k = 0.0, j
        while k < len(cover) and cover[k][0] < end:
            covered += min(end, cover[k][1]) - max(start, cover[k][0])
            k += 1
        total += (end - start) - covered
    return total


def summarize(kernels: list) -> dict:
    """{"kinds": {kind: (us, count)}, "compute_us", "communication_us", "exposed_us",
    "window_us", "names": {(kind, name): us}}."""
    kinds: dict = defaultdict(lambda: [0.0, 0])
    names: dict = defaultdict(float)
    compute, comm = [], []
    for start, end, name in kernels:
        kind = kind_of(name)
        kinds[kind][0] += end - start
        kinds[kind][1] += 1
        names[(kind, name)] += end - start
        (comm if kind == "communication" else compute).append((start, end))
    compute, comm = merged(compute), merged(comm)
    return {"kinds": {k: tuple(v) for k, v in kinds.items()},
            "compute_us": sum(e - s for s, e in compute),
            "communication_us": sum(e - s for s, e in comm),
            "exposed_us": uncovered(comm, compute),
            "window_us": max(e for _, e, _ in kernels) - min(s for s, _, _ in kernels),
            "names": dict(names)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=1, help="Steps the trace covers (for per-step "
                   "figures).")
    p.add_argument("--top", type=int, default=20, help="Largest kernels by name to list.")
    args = p.parse_args(argv)
    try:
        s = summarize(load_kernels(args.trace))
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"profile_kernels.py: {args.trace}: {e}", file=sys.stderr)
        return 2
    n = args.steps
    print("ms/step  kernels/step  kind")
    for kind, (us, count) in sorted(s["kinds"].items(), key=lambda kv: -kv[1][0]):
        print(f"{us / 1e3 / n:8.2f}  {count / n:12.1f}  {kind}")
    print(f"\nwindow {s['window_us'] / 1e3 / n:.2f} ms/step: compute busy "
          f"{s['compute_us'] / 1e3 / n:.2f}, communication busy "
          f"{s['communication_us'] / 1e3 / n:.2f}, of it beside no compute (exposed) "
          f"{s['exposed_us'] / 1e3 / n:.2f}")
    print("\nlargest kernels (ms/step, kind, name):")
    for (kind, name), us in sorted(s["names"].items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {us / 1e3 / n:8.2f}  {kind:13s}  {name[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
