"""Throughput of pretrain_gpt.py itself on random tokens in a real .bin/.idx dataset.

    python tools/benchmark.py --preset 1.3b                   # one GPU
    torchrun --nproc-per-node 2 tools/benchmark.py --preset 350m -- --tensor-model-parallel-size 2
    python tools/benchmark.py --preset tiny --steps 4         # CPU smoke run

Runs warm-up steps, then `--steps` timed steps through the full training path (DeepSpeed
engine, bf16 with fp32 master weights on GPUs, data loader, logging), and prints tokens/s,
TFLOP/s per GPU, MFU against both the datasheet peak and a bf16 8192^3 matmul measured in the
same run, and peak memory (with --time-split, also the ms per step in data loading, forward,
backward and optimizer). On GPUs it also reports rank 0's SM clock, power draw and how often
the driver capped the power during the timed steps (tools/gpu_clocks.py): a card at its power
limit runs below its top clock, the matmul peak measured before the run included. Flags after
`--` go to pretrain_gpt.py and override the preset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # sibling tools (gpu_clocks)

VOCAB = 50303  # NullTokenizer ids; + eod = 50304, GPT-2's padded size

PRESETS = {  # the shapes of nanoGPT's and Megatron's reference runs
    "tiny": ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
             "--seq-length", "128", "--micro-batch-size", "4"],
    "124m": ["--num-layers", "12", "--hidden-size", "768", "--num-attention-heads", "12",
             "--seq-length", "1024", "--micro-batch-size", "16"],
    "350m": ["--num-layers", "24", "--hidden-size", "1024", "--num-attention-heads", "16",
             "--seq-length", "2048", "--micro-batch-size", "8"],
    "1.3b": ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16",
             "--seq-length", "2048", "--micro-batch-size", "8"],
}


def write_random_dataset(prefix: Path, tokens: int, seed: int = 0) -> None:
    """Documents of 500-4000 random ids (uint16) until `tokens` are written."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    written = 0
    while written < tokens:
        n = int(rng.integers(500, 4000))
        doc = rng.integers(0, VOCAB, size=n, dtype=np.int64)
        doc[-1] = VOCAB  # eod
        builder.add_item(torch.from_numpy(doc))
        builder.end_document()
        written += n
    builder.finalize(str(prefix) + ".idx")


def ensure_dataset(prefix: Path, tokens: int) -> None:
    """Written once by local rank 0; other ranks wait for it."""
    done = Path(str(prefix) + ".done")
    if os.environ.get("LOCAL_RANK", "0") == "0":
        if not done.exists():
            prefix.parent.mkdir(parents=True, exist_ok=True)
            write_random_dataset(prefix, tokens)
            done.write_text("ok")
    deadline = time.time() + 600
    while not done.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{done} did not appear")
        time.sleep(0.5)


def matmul_peak_tflops() -> float | None:
    """Median bf16 8192^3 matmul rate on this GPU (the MFU denominator measured here)."""
    import torch
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192 ** 3 / sorted(times)[len(times) // 2] / 1e12


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="124m")
    p.add_argument("--steps", type=int, default=20, help="Timed steps.")
    p.add_argument("--warmup", type=int, default=10, help="Untimed steps before them.")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/gpt3d-bench"))
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    p.add_argument("--time-split", action="store_true",
                   help="Also report ms per step in data, forward, backward and optimizer "
                        "(--log-timers-to-tensorboard: synchronises each phase on GPUs, so "
                        "compare tokens/s only between runs without it).")
    args = p.parse_args(argv)

    import torch
    on_gpu = torch.cuda.is_available()
    peak = matmul_peak_tflops() if os.environ.get("LOCAL_RANK", "0") == "0" else None
    prefix = args.data_dir / "random_text_document"
    ensure_dataset(prefix, tokens=4_000_000 if on_gpu else 200_000)
    iters = args.warmup + args.steps  # every step is logged; the last `steps` are timed
    flags = PRESETS[args.preset] + [
        "--train-iters", str(iters), "--log-interval", "1",
        "--lr", "1e-4", "--lr-warmup-iters", "0", "--lr-decay-style", "constant",
        "--hidden-dropout", "0", "--attention-dropout", "0",
        "--data-path", str(prefix), "--split", "98,1,1", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", str(VOCAB), "--eval-interval", str(10 * iters), "--eval-iters", "1",
        "--seed", "1234"]
    if args.time_split:
        flags.append("--log-timers-to-tensorboard")
    if on_gpu:
        flags += ["--bf16", "--deepspeed_config", "ds_configs/zero1_bf16.json"]
    else:
        flags += ["--deepspeed_config", "ds_configs/zero1.json"]
    os.chdir(ROOT)
    sampler = None
    if on_gpu and os.environ.get("RANK", "0") == "0":  # rank 0 watches its own GPU
        from gpu_clocks import ClockSampler, torch_gpu_id
        sampler = ClockSampler(torch_gpu_id(torch.cuda.current_device()))
        if not sampler.start():
            sampler = None
    import pretrain_gpt
    try:
        trainer = pretrain_gpt.main(flags + extra)
    finally:
        samples = sampler.stop() if sampler else []
    import torch.distributed as dist
    mem_per_rank = [None] * trainer.layout.world_size  # peak GiB of every GPU
    dist.all_gather_object(mem_per_rank, torch.cuda.max_memory_allocated() / 2**30
                           if on_gpu else None)
    if trainer.layout.rank != 0:
        return 0
    steps = [h for h in trainer.history if "tokens/s" in h]
    timed = steps[-args.steps:]
    seconds = sum(h["step ms"] for h in timed) / 1e3
    tokens_per_s = sum(h["global batch"] for h in timed) * trainer.cfg.model.seq_length / seconds
    tflops = tokens_per_s * trainer.flops_per_token / trainer.layout.world_size / 1e12
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
              "world_size": trainer.layout.world_size, "layout": trainer.layout.describe(),
              "tokens_per_s": tokens_per_s, "step_ms": 1e3 * seconds / len(timed),
              "tflops_per_gpu": tflops if on_gpu else None,
              "mfu_datasheet_pct": 100 * tflops * 1e12 / trainer.peak if trainer.peak else None,
              "matmul_peak_tflops": peak, "mem_gib_per_rank": mem_per_rank,
              "losses": {h["iteration"]: h["loss"] for h in steps}, "flags": flags + extra}
    if peak and on_gpu:
        result["mfu_measured_peak_pct"] = 100 * tflops / peak
    if samples:  # the timed steps: from the log of the step before them to the last one's
        from gpu_clocks import format_summary, summarize
        before = steps[-args.steps - 1]["logged at"] if len(steps) > args.steps else None
        result["gpu_clocks"] = summarize(samples, before, timed[-1]["logged at"])
        if result["gpu_clocks"]:
            print("GPU during the timed steps: " + format_summary(result["gpu_clocks"]))
    phases = sorted({k for h in timed for k in h if k.endswith(" ms") and k != "step ms"})
    if phases:
        result["split_ms"] = {k[:-3]: sum(h.get(k, 0.0) for h in timed) / len(timed)
                              for k in phases}
    print("BENCHMARK " + json.dumps({k: v for k, v in result.items()
                                     if k not in ("flags", "losses")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
