"""Draw training curves (loss, validation loss, learning rate, grad norm, ...) from the
TensorBoard logs of one or more runs into a PNG.

    python tools/plot_logs.py runs/quickstart/tensorboard --output curves.png
    python tools/plot_logs.py run_a/tb run_b/tb --x tokens --output compare.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = (("train/loss", "validation/lm loss"), ("train/lr",), ("train/grad norm",),
          ("train/tokens/s",))


def read_scalars(logdir: Path, x: str) -> dict[str, tuple[list, list]]:
    """{tag: (xs, ys)} from a TensorBoard log directory; x picks steps, samples or tokens."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if not tags:
        raise ValueError(f"{logdir}: no TensorBoard scalars (is it a --tensorboard-dir?)")
    suffix = {"steps": "", "samples": " vs samples", "tokens": " vs tokens"}[x]
    out = {}
    for tag in tags:
        if x == "steps" and (tag.endswith(" vs samples") or tag.endswith(" vs tokens")):
            continue
        if suffix and not tag.endswith(suffix):
            continue
        events = acc.Scalars(tag)
        out[tag[: len(tag) - len(suffix)] if suffix else tag] = (
            [e.step for e in events], [e.value for e in events])
    return out


def plot(runs: dict[str, dict], x: str, output: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(t in r for r in runs.values() for t in p)]
    if not panels:
        raise ValueError("none of the logs has train/loss, train/lr or train/grad norm")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)), squeeze=False)
    for ax, tags in zip(axes[:, 0], panels):
        for name, scalars in runs.items():
            for tag in tags:
                if tag in scalars:
                    xs, ys = scalars[tag]
                    label = f"{name}: {tag}" if len(runs) > 1 or len(tags) > 1 else tag
                    ax.plot(xs, ys, label=label, marker="." if len(xs) < 20 else None)
        ax.set_ylabel(tags[0].split("/", 1)[-1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel(x)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    return [t for p in panels for t in p]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logdirs", nargs="+", type=Path, help="--tensorboard-dir of each run.")
    p.add_argument("--output", type=Path, default=Path("curves.png"), help="PNG to write.")
    p.add_argument("--x", choices=["steps", "samples", "tokens"], default="steps",
                   help="Horizontal axis.")
    args = p.parse_args(argv)
    runs = {}
    for d in args.logdirs:
        if not d.is_dir():
            p.error(f"{d}: no such directory")
        try:
            runs[str(d)] = read_scalars(d, args.x)
        except ValueError as e:
            p.error(str(e))
    plot(runs, args.x, args.output)
    print(f"wrote {args.output} ({len(runs)} run(s), x = {args.x})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
