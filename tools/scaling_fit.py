"""Fit scaling laws to a set of runs and predict the compute-optimal model size and tokens.

    python tools/scaling_fit.py --input runs/abl/results.csv --budget 1e21 --output-dir fits
    python tools/scaling_fit.py --input a.csv --input b.csv --form joint --bootstrap 200
    python tools/scaling_fit.py --synthetic chinchilla --noise 0.01 --budget 5.76e23   # self-check

Forms (--form, default all that the data allow):
  n      L(N) = (N_c / N)^alpha_N           (Kaplan et al. 2020; a line in log-log space)
  d      L(D) = (D_c / D)^alpha_D
  joint  L(N, D) = E + A / N^alpha + B / D^beta   (Hoffmann et al. 2022, approach 3: Huber loss,
         delta 1e-3, on log-residuals, L-BFGS from a grid of starts; needs >= 5 runs that vary
         both N and D), and for each --budget C the compute-optimal N_opt, D_opt under C = 6 N D.
Confidence intervals: percentile bootstrap over runs (--bootstrap resamples, --level).

Input: CSV with one row per run; columns picked by --n-column (default n_params), --d-column
(tokens) and --loss-column (val_loss, else loss); tools/ablate.py's results.csv works as is
(use --n-column n_params_non_embedding for Kaplan's non-embedding N). Rows whose status is not
ok/collected or whose loss is not finite are skipped.
Output: a summary on stdout, OUTPUT_DIR/fit.json and OUTPUT_DIR/scaling_fit.png.
Warnings (stderr, fit.json's "warnings" and the plot): a negative fitted exponent, an exponent
whose interval contains 0, L(N)/L(D) on runs where N and D are anti-correlated (e.g. all at one
FLOP budget, an IsoFLOP profile), a joint coefficient at the bound of its search range, N and D
varying together (megatron/eval/scaling.py:diagnose).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402
from megatron.eval.scaling import (CHINCHILLA, diagnose, fit_joint, fit_power,  # noqa: E402
                                   synthetic_runs)


def read_runs(paths, n_col, d_col, loss_col):
    n, d, loss = [], [], []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status", "ok") not in ("ok", "collected", ""):
                    continue
                lc = loss_col or ("val_loss" if "val_loss" in row else "loss")
                try:
                    vals = float(row[n_col]), float(row[d_col]), float(row[lc])
                except (KeyError, ValueError) as e:
                    raise SystemExit(f"{path}: needs numeric columns {n_col}, {d_col}, {lc} "
                                     f"({e})")
                if all(math.isfinite(v) and v > 0 for v in vals):
                    n.append(vals[0])
                    d.append(vals[1])
                    loss.append(vals[2])
    return np.array(n), np.array(d), np.array(loss)


def _ci(ci, key):
    lo, hi = ci.get(key, (math.nan, math.nan))
    return f" [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) else ""


def main(argv=None) -> int:
    p = tool_parser(__doc__)
    p.add_argument("--input", action="append", default=[], help="CSV of runs (repeatable)")
    p.add_argument("--synthetic", choices=["chinchilla"], default=None,
                   help="fit points drawn from Chinchilla's published law instead of --input")
    p.add_argument("--noise", type=float, default=0.0, help="--synthetic: log-normal noise std")
    p.add_argument("--n-column", default="n_params")
    p.add_argument("--d-column", default="tokens")
    p.add_argument("--loss-column", default=None)
    p.add_argument("--form", choices=["n", "d", "joint", "all"], default="all")
    p.add_argument("--budget", type=float, action="append", default=[],
                   help="compute budget C in FLOPs (C = 6 N D) for the compute-optimal N, D")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--huber", action="store_true", help="Huber loss also for the n/d fits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=None)
    args = p.parse_args(argv)

    if args.synthetic:
        n, d, loss = synthetic_runs(CHINCHILLA, noise=args.noise, seed=args.seed)
    elif args.input:
        n, d, loss = read_runs(args.input, args.n_column, args.d_column, args.loss_column)
    else:
        p.error("give --input CSV (or --synthetic chinchilla)")
    print(f"{len(n)} runs: N {n.min():.3g}..{n.max():.3g}, D {d.min():.3g}..{d.max():.3g}, "
          f"loss {loss.min():.4g}..{loss.max():.4g}")
    result = {"n_runs": len(n), "level": args.level}
    fits, warnings = {}, []
    forms = ["n", "d", "joint"] if args.form == "all" else [args.form]
    for form in forms:
        x = n if form == "n" else d
        if form in ("n", "d"):
            if len(set(x.tolist())) < 2:
                print(f"L({form.upper()}): skipped (needs runs of at least 2 distinct values)")
                continue
            f = fit_power(x, loss, huber=args.huber, bootstrap=args.bootstrap, level=args.level,
                          seed=args.seed)
            fits[form] = f
            print(f"L({form.upper()}) = ({form.upper()}_c/{form.upper()})^alpha: alpha = "
                  f"{f.exponent:.4f}{_ci(f.ci, 'exponent')}, {form.upper()}_c = "
                  f"{f.x_c:.4g}{_ci(f.ci, 'x_c')}")
            result[f"L({form.upper()})"] = {"exponent": f.exponent, "x_c": f.x_c, "ci": f.ci}
            warnings += diagnose(form, f, n, d)
        else:
            if len(n) < 5 or len(set(n.tolist())) < 2 or len(set(d.tolist())) < 2:
                print("L(N, D): skipped (needs >= 5 runs varying both N and D)")
                continue
            f = fit_joint(n, d, loss, bootstrap=args.bootstrap, level=args.level, seed=args.seed)
            fits["joint"] = f
            print("L(N, D) = E + A/N^alpha + B/D^beta: " + ", ".join(
                f"{k} = {v:.4g}{_ci(f.ci, k)}" for k, v in f.params.items()))
            result["L(N,D)"] = {"params": f.params,
                                "ci": {k: v for k, v in f.ci.items() if k != "level"}}
            warnings += diagnose("joint", f, n, d)
            opt = []
            for C in args.budget:
                o = f.compute_optimal(C)
                opt.append(o)
                print(f"C = {C:.3g} FLOPs: N_opt = {o['N_opt']:.4g}{_ci(o, 'N_opt_ci')}, "
                      f"D_opt = {o['D_opt']:.4g}{_ci(o, 'D_opt_ci')} "
                      f"({o['tokens_per_param']:.1f} tokens/param), predicted loss "
                      f"{o['loss']:.4f}; N_opt ~ C^{o['a']:.3f}, D_opt ~ C^{o['b']:.3f}")
            result["compute_optimal"] = opt
    if args.budget and "joint" not in fits:
        print("compute-optimal N, D need the joint fit")
    for w in warnings:
        print(f"scaling_fit.py: warning: {w}", file=sys.stderr)
    result["warnings"] = warnings
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "fit.json").write_text(json.dumps(result, indent=2, default=float))
        plot(n, d, loss, fits, args.budget, args.output_dir / "scaling_fit.png", warnings)
        print(f"wrote {args.output_dir / 'fit.json'} and {args.output_dir / 'scaling_fit.png'}")
    return 0


def plot(n, d, loss, fits, budgets, out, warnings=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("n", "d", "joint") if k in fits] or ["n"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, k in zip(axes[0], panels):
        if k in ("n", "d"):
            x = n if k == "n" else d
            ax.scatter(x, loss, s=12, label="runs")
            if k in fits:
                xs = np.logspace(np.log10(x.min()), np.log10(x.max()), 100)
                ax.plot(xs, fits[k].predict(xs), "r-",
                        label=f"alpha={fits[k].exponent:.3f}")
            ax.set_xlabel("parameters N" if k == "n" else "tokens D")
        else:
            f = fits[k]
            sc = ax.scatter(n, loss, c=np.log10(d), s=12, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="log10 tokens")
            for dv in sorted(set(d.tolist()))[:: max(1, len(set(d.tolist())) // 5)]:
                ns = np.logspace(np.log10(n.min()), np.log10(n.max()), 100)
                ax.plot(ns, f.predict(ns, dv), "-", color="gray", lw=0.8)
            for C in budgets:
                o = f.compute_optimal(C)
                ax.axvline(o["N_opt"], ls="--", color="r", lw=0.8)
            ax.set_xlabel("parameters N (lines: fitted L(N, D) at fixed D; dashed: N_opt)")
            ax.set_title(", ".join(f"{k}={v:.3g}" for k, v in f.params.items()), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7) if k != "joint" else None
    if warnings:  # in red under the panels
        lines = textwrap.wrap("WARNING: " + " | ".join(warnings), int(fig.get_figwidth() * 21))
        fig.text(0.01, 0.01, "\n".join(lines), color="red", fontsize=6, va="bottom")
        fig.tight_layout(rect=(0, 0.02 + 0.028 * len(lines), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
