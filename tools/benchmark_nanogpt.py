"""The same-card baseline for tools/benchmark.py: nanoGPT's own model on a preset's shape.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python tools/benchmark_nanogpt.py --nanogpt-dir /tmp/nanoGPT --preset 1.3b
    python tools/benchmark.py --preset 1.3b -- --torch-compile      # then ours, on the same card

Imports `GPT` and `GPTConfig` from the checkout's model.py (nothing of nanoGPT is in this
repository) and runs the loop of its bench.py: whole-model torch.compile, autocast bf16, its
fused AdamW (configure_optimizers), fixed random tokens of GPT-2's padded vocabulary (50304),
dropout 0, untimed then timed steps with `loss.item()` after each. Prints tokens/s, ms per step
and peak memory (torch.cuda.max_memory_allocated). Cards of one kind differ by a few percent
(docs/benchmarks.md), so compare tools/benchmark.py's figures with this tool's from the same
machine only. On a CPU (no compile, fp32) it only checks that the loop runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from benchmark import PRESETS  # noqa: E402  (the shapes tools/benchmark.py runs)

VOCAB = 50304  # GPT-2's vocabulary padded to a multiple of 64, as nanoGPT and our presets use


def preset_shape(preset: str) -> dict:
    """{flag: int} of a tools/benchmark.py preset (layers, hidden, heads, seq, micro-batch)."""
    flags = PRESETS[preset]
    return {flags[i].lstrip("-"): int(flags[i + 1]) for i in range(0, len(flags), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt-dir", type=Path, required=True,
                   help="A checkout of github.com/karpathy/nanoGPT (its model.py is imported).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="124m")
    p.add_argument("--steps", type=int, default=20, help="Timed steps (bench.py: 20).")
    p.add_argument("--warmup", type=int, default=10, help="Untimed steps first (bench.py: 10).")
    p.add_argument("--bias", action="store_true",
                   help="Biases in the linear layers and LayerNorms (nanoGPT's GPTConfig default; "
                        "bench.py sets none).")
    p.add_argument("--no-compile", action="store_true", help="Skip torch.compile.")
    args = p.parse_args(argv)
    model_py = args.nanogpt_dir / "model.py"
    if not model_py.is_file():
        p.error(f"--nanogpt-dir {args.nanogpt_dir}: no model.py there (a nanoGPT checkout?)")

    import torch
    sys.path.insert(0, str(args.nanogpt_dir))
    from model import GPT, GPTConfig  # nanoGPT's

    shape = preset_shape(args.preset)
    B, T = shape["micro-batch-size"], shape["seq-length"]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = GPTConfig(block_size=T, vocab_size=VOCAB, n_layer=shape["num-layers"],
                    n_head=shape["num-attention-heads"], n_embd=shape["hidden-size"],
                    dropout=0.0, bias=args.bias)
    model = GPT(cfg).to(device)
    optimizer = model.configure_optimizers(weight_decay=1e-2, learning_rate=1e-4,
                                           betas=(0.9, 0.95), device_type=device)
    if not args.no_compile:
        model = torch.compile(model)
    x = torch.randint(VOCAB, (B, T), device=device)  # (B, T) fixed random tokens, as bench.py
    y = torch.randint(VOCAB, (B, T), device=device)
    autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for steps in (args.warmup, args.steps):  # the second loop is the timed one
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast:
                _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last = loss.item()
        sync()
        seconds = time.perf_counter() - t0
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"nanoGPT {args.preset} (bias {args.bias}) on {name}: "
          f"{B * T * args.steps / seconds:.0f} tokens/s, {seconds / args.steps * 1000:.1f} ms per "
          f"step, peak memory {peak}, loss {last:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
