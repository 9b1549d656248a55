"""Architecture ablations at a fixed compute budget: train every variant of a grid for the same
FLOPs (or tokens), collect validation loss, bits per byte and lm-eval scores, and write a results
table (CSV + Markdown) and plots.

    python tools/ablate.py --output runs/abl --budget-flops 2e12 \\
        --vary position-embedding-type=learned:learned_absolute,rope,alibi \\
        --vary glu-activation=gelu:default,swiglu \\
        -- --num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 32 \\
           --micro-batch-size 4 --global-batch-size 8 --data-path data/x_text_document ...
    python tools/ablate.py --grid grid.yaml --output runs/abl     # base/variants/budget in a file
    python tools/ablate.py --grid grid.yaml --output runs/abl --launcher slurm  # sbatch per run
    python tools/ablate.py --output runs/abl --collect-only              # table + plots from logs

Flags after `--` are the base pretrain_gpt.py flags; each variant's flags are appended (later
flags win). --train-iters/--train-samples/--exit-interval are removed: the budget sets the run
length, S = round(budget / (FLOPs per token x seq x global batch)) steps, FLOPs per token being
megatron.trainer.metrics.flops_per_token of the variant (6 N + 12 L h s; GLU, biases, untied
output and learned positions included). Every run's realised budget is reported and must be
within --tolerance (2%) of the target. A GPU-hours budget is converted to FLOPs with an assumed
peak and MFU (--peak-tflops, --mfu), printed with the plan.

BPB: by default estimated from the validation loss: bits/byte = loss / ln 2 x tokens per byte,
the tokens per byte of the first --data-path dataset measured by detokenizing its first 2000
documents (column bpb_method = "val_loss x tokens/byte"). With --bpb-input TEXT.jsonl each run's
final checkpoint is scored by tools/eval_perplexity.py on that held-out text instead
(bpb_method = "eval_perplexity"). --eval-tasks runs tasks/eval_harness/evaluate.py on each final
checkpoint and adds one column per task metric. Scores are kept in OUTPUT/<run>/bpb.json and
lm_eval.json; --collect-only with --bpb-input/--eval-tasks scores the finished runs that lack
them (e.g. after SLURM jobs), and any later --collect-only puts them in the table again.

Output: OUTPUT/plan.json, OUTPUT/<run>/{train.log, checkpoints/, ...}, OUTPUT/results.csv,
OUTPUT/results.md, OUTPUT/loss_vs_tokens.png, OUTPUT/final_scores.png; with --launcher slurm
OUTPUT/<run>/job.sbatch, and with --submit OUTPUT/<run>/job_id (the job's logs:
OUTPUT/<run>/abl-<run>-<job id>-run<restart>.log).
results.csv is the input format of tools/scaling_fit.py (n_params, n_params_non_embedding,
tokens, val_loss).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from megatron.config.tool_args import tool_parser  # noqa: E402
from megatron.eval.ablation import (bpb_from_loss, load_grid, parse_log, plan_grid,  # noqa: E402
                                    tokens_per_byte, write_sbatch)

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
COLUMNS = ["run", "variant", "status", "flags", "budget", "budget_kind", "n_params",
           "n_params_non_embedding", "flops_per_token", "seq_length", "global_batch", "steps",
           "tokens", "realised_flops", "budget_error_pct", "train_loss", "val_loss", "val_ppl",
           "test_loss", "val_bpb", "bpb_method", "wall_s"]


def parse_args(argv):
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = tool_parser(__doc__)
    p.add_argument("--output", required=True, type=Path, help="output directory")
    p.add_argument("--grid", help="JSON/YAML: {base: [...], variants: {name: [...]}, "
                   "vary: [FLAG=v1,v2 or {LABEL: [flags]}], budget: {flops|tokens|gpu_hours: X} "
                   "or a list}")
    p.add_argument("--vary", action="append", default=[],
                   help="FLAG=v1,v2,... (cross product over all --vary); `default` leaves the "
                   "flag out, `on`/`off` toggle a switch")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="a named variant, e.g. 'rope_swiglu=--position-embedding-type rope "
                   "--glu-activation swiglu'")
    p.add_argument("--budget-flops", type=float, action="append", default=[])
    p.add_argument("--budget-tokens", type=float, action="append", default=[])
    p.add_argument("--budget-gpu-hours", type=float, action="append", default=[])
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="GPU-hours budgets: peak TFLOP/s per GPU (default H100 SXM dense bf16)")
    p.add_argument("--mfu", type=float, default=0.4, help="GPU-hours budgets: assumed MFU")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="largest allowed |realised/target - 1| of a run's budget")
    p.add_argument("--nproc", type=int, default=1, help="processes per local run (torchrun)")
    p.add_argument("--eval-points", type=int, default=4,
                   help="validations per run when the base flags set no --eval-interval")
    p.add_argument("--launcher", choices=["local", "slurm", "none"], default="local",
                   help="local: run one after another here; slurm: write OUTPUT/<run>/job.sbatch "
                   "(and submit with --submit); none: plan only")
    p.add_argument("--submit", action="store_true", help="slurm: sbatch the job files")
    p.add_argument("--slurm-nodes", type=int, default=1)
    p.add_argument("--slurm-tasks-per-node", type=int, default=8)
    p.add_argument("--slurm-gpus-per-node", type=int, default=8)
    p.add_argument("--slurm-cpus-per-task", type=int, default=8)
    p.add_argument("--slurm-time", default="24:00:00")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-extra", action="append", default=[],
                   help="extra #SBATCH line, e.g. --slurm-extra=--account=X (repeatable)")
    p.add_argument("--collect-only", action="store_true",
                   help="no training: build the table and plots from OUTPUT's logs")
    p.add_argument("--bpb-input", default=None,
                   help="held-out .jsonl/text: BPB of each final checkpoint by "
                   "tools/eval_perplexity.py (default: from validation loss)")
    p.add_argument("--eval-tasks", default=None, help="lm-eval tasks on each final checkpoint")
    p.add_argument("--eval-include-path", default=None)
    p.add_argument("--eval-limit", type=float, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds per local run")
    p.add_argument("--keep-going", action="store_true", help="a failed run does not stop the grid")
    args = p.parse_args(argv)
    args.base = extra
    return args


def build_grid(args):
    budgets = ([{"flops": v} for v in args.budget_flops]
               + [{"tokens": v} for v in args.budget_tokens]
               + [{"gpu_hours": v, "peak_tflops": args.peak_tflops, "mfu": args.mfu}
                  for v in args.budget_gpu_hours])
    grid = load_grid(args.grid, args.base, args.vary, budgets)
    for item in args.variant:
        name, _, flags = item.partition("=")
        grid["variants"][name] = flags.split()
    if args.variant and "base" in grid["variants"] and not grid["variants"]["base"] \
            and len(grid["variants"]) > 1:
        del grid["variants"]["base"]
    return grid


def run_flags(plan, run_dir: Path, args, resume: bool = False) -> list[str]:
    flags = list(plan.flags)
    if "--eval-interval" not in flags:
        flags += ["--eval-interval", str(max(1, plan.steps // max(1, args.eval_points)))]
    if "--log-interval" not in flags:
        flags += ["--log-interval", str(max(1, plan.steps // 50))]
    if "--save" not in flags:  # the final checkpoint: BPB / lm-eval (and SLURM requeues resume)
        flags += ["--save", str(run_dir / "checkpoints")]
        if resume:
            flags += ["--load", str(run_dir / "checkpoints")]
    if "--tensorboard-dir" not in flags:
        flags += ["--tensorboard-dir", str(run_dir / "tensorboard")]
    return flags


def _env():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_local(plan, run_dir: Path, flags, args) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc}", "pretrain_gpt.py", *flags]
    log = run_dir / "train.log"
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    print(f"[ablate] {plan.name}: {plan.steps} steps, {plan.tokens:,} tokens, "
          f"{plan.realised_flops:.4g} FLOPs ({plan.budget_error_pct:+.2f}%)", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"status": "ok" if rc == 0 else f"failed ({rc})", "wall_s": round(time.time() - t0, 1)}


def _have_bpb(run_dir: Path, args) -> bool:
    res = run_dir / "bpb.json"
    return res.exists() and json.loads(res.read_text()).get("input") == args.bpb_input


def _have_lm_eval(run_dir: Path, args) -> bool:
    res = run_dir / "lm_eval.json"
    if not res.exists():
        return False
    r = json.loads(res.read_text())
    done = set(r.get("results", {})) | set(r.get("groups", {}))
    return all(t.strip() in done for t in args.eval_tasks.split(",") if t.strip())


def post_eval(run_dir: Path, args, skip_done: bool = False) -> None:
    """--bpb-input / --eval-tasks on the run's final checkpoint: OUTPUT/<run>/bpb.json and
    lm_eval.json, which collect() reads. skip_done (--collect-only): keep results already there
    for the same --bpb-input file / every requested task."""
    ckpt = run_dir / "checkpoints"
    if args.bpb_input and not (skip_done and _have_bpb(run_dir, args)):
        print(f"[ablate] {run_dir.name}: bits per byte of {ckpt} on {args.bpb_input}", flush=True)
        subprocess.run([sys.executable, "tools/eval_perplexity.py", "--load", str(ckpt),
                        "--input", args.bpb_input, "--results-path", str(run_dir / "bpb.json")],
                       cwd=ROOT, env=_env(), check=True, capture_output=True, text=True)
    if args.eval_tasks and not (skip_done and _have_lm_eval(run_dir, args)):
        print(f"[ablate] {run_dir.name}: lm-eval {args.eval_tasks} on {ckpt}", flush=True)
        cmd = [sys.executable, "tasks/eval_harness/evaluate.py", "--load", str(ckpt),
               "--tasks", args.eval_tasks, "--results-path", str(run_dir / "lm_eval.json")]
        if args.eval_include_path:
            cmd += ["--include-path", args.eval_include_path]
        if args.eval_limit:
            cmd += ["--limit", str(args.eval_limit)]
        subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True, text=True)


def read_post_eval(run_dir: Path) -> dict:
    """Columns from OUTPUT/<run>/bpb.json (val_bpb measured on held-out text, which replaces
    the estimate from validation loss) and lm_eval.json (one `task/metric` column each)."""
    out = {}
    if (run_dir / "bpb.json").exists():
        res = json.loads((run_dir / "bpb.json").read_text())
        out["val_bpb"] = res["bits_per_byte"]
        out["bpb_method"] = f"eval_perplexity {res.get('input', '')}".strip()
    if (run_dir / "lm_eval.json").exists():
        for task, metrics in json.loads((run_dir / "lm_eval.json").read_text())["results"].items():
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and "stderr" not in k:
                    out[f"{task}/{k.split(',')[0]}"] = v
    return out


def _tail(e: subprocess.CalledProcessError) -> str:
    return " ".join((e.stderr or str(e))[-300:].split())


def read_logs(run_dir: Path) -> str:
    """train.log (local) or the SLURM run logs (one per restart), oldest first."""
    logs = [run_dir / "train.log"] if (run_dir / "train.log").exists() else []
    logs += sorted(run_dir.glob("abl-*-run*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(p.read_text(errors="replace") for p in logs)


def collect(plan, run_dir: Path, extra: dict, tpb) -> tuple[dict, dict]:
    curves = parse_log(read_logs(run_dir))
    row = {"run": plan.name, "variant": plan.variant, "flags": " ".join(plan.flags),
           "budget": plan.budget.value, "budget_kind": plan.budget.kind,
           "n_params": plan.n_params, "n_params_non_embedding": plan.n_params_non_embedding,
           "flops_per_token": plan.flops_per_token, "seq_length": plan.seq_length,
           "global_batch": plan.global_batch, "steps": plan.steps, "tokens": plan.tokens,
           "realised_flops": plan.realised_flops,
           "budget_error_pct": round(plan.budget_error_pct, 4)}
    row["status"] = extra.pop("status", "collected")
    done = curves["train"] and curves["train"][-1][0] == plan.steps
    if row["status"] == "collected" and not done:
        row["status"] = "incomplete"
    row["train_loss"] = curves["train"][-1][2] if curves["train"] else math.nan
    last_val = [v for v in curves["validation"] if v[0] == plan.steps] or curves["validation"][-1:]
    row["val_loss"] = last_val[-1][2] if last_val else math.nan
    row["val_ppl"] = last_val[-1][3] if last_val else math.nan
    row["test_loss"] = curves["test"][-1][2] if curves["test"] else math.nan
    if tpb is not None and math.isfinite(row["val_loss"]):
        row["val_bpb"] = bpb_from_loss(row["val_loss"], tpb[0])
        row["bpb_method"] = "val_loss x tokens/byte"
    row.update(read_post_eval(run_dir))
    row.update(extra)
    return row, curves


def run_done(plan, run_dir: Path) -> bool:
    """The run's logs reach its last step (training finished)."""
    train = parse_log(read_logs(run_dir))["train"]
    return bool(train) and train[-1][0] == plan.steps


def write_table(rows, out: Path):
    cols = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    show = ["run", "status", "n_params", "flops_per_token", "steps", "tokens", "realised_flops",
            "budget_error_pct", "train_loss", "val_loss", "val_bpb"] + cols[len(COLUMNS):]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "nan"
        return f"{v:,}" if isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(show) + " |", "|" + " --- |" * len(show)]
    for r in sorted(rows, key=lambda r: (r.get("budget", 0), _num(r.get("val_loss")))):
        lines.append("| " + " | ".join(fmt(r.get(k, "")) for k in show) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _num(v):
    try:
        v = float(v)
        return v if math.isfinite(v) else math.inf
    except (TypeError, ValueError):
        return math.inf


def plot(rows, curves, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, c in curves.items():
        if c["train"]:
            line, = ax.plot([t for _, t, _ in c["train"]], [v for _, _, v in c["train"]],
                            alpha=0.6, label=f"{name} train")
            val = [(t, v) for _, t, v, _ in c["validation"] if t is not None]
            if val:
                ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{name} validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss vs tokens at a fixed budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_tokens.png", dpi=120)
    plt.close(fig)

    metrics = ["val_loss", "val_bpb"] + sorted({k for r in rows for k in r if "/" in k})
    metrics = [m for m in metrics
               if any(math.isfinite(_num(r.get(m))) for r in rows)] or ["val_loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    names = [r["run"] for r in rows]
    for ax, m in zip(axes[0], metrics):
        vals = [_num(r.get(m)) for r in rows]
        ax.bar(range(len(rows)), [v if math.isfinite(v) else 0 for v in vals])
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(m)
        finite = [v for v in vals if math.isfinite(v)]
        if finite and m in ("val_loss", "val_bpb"):
            lo, hi = min(finite), max(finite)
            pad = max(0.05 * (hi - lo), 0.01 * hi)
            ax.set_ylim(lo - 3 * pad, hi + pad)
    fig.tight_layout()
    fig.savefig(out / "final_scores.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    os.chdir(ROOT)
    grid = build_grid(args)
    try:
        plans = plan_grid(grid, world_size=args.nproc, tolerance=args.tolerance)
    except ValueError as e:
        sys.exit(f"ablate.py: error: {e}")
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for b in grid["budgets"]:
        if b.note:
            print(f"[ablate] budget: {b.note}")
    plan_json = [{k: (v.__dict__ if k == "budget" else v) for k, v in p.__dict__.items()}
                 for p in plans]
    (out / "plan.json").write_text(json.dumps(plan_json, indent=2))
    for p in plans:
        print(f"[ablate] plan {p.name}: N={p.n_params:,} ({p.n_params_non_embedding:,} "
              f"non-embedding), {p.flops_per_token:.4g} FLOPs/token, {p.steps} steps x "
              f"{p.global_batch} x {p.seq_length} = {p.tokens:,} tokens, "
              f"{p.realised_flops:.4g} FLOPs ({p.budget_error_pct:+.2f}% of {p.budget.label})")
    fixed = {"--lr-decay-iters", "--lr-decay-samples", "--lr-decay-tokens"} & \
        {f for p in plans for f in p.flags}
    if fixed:
        print(f"[ablate] warning: {', '.join(sorted(fixed))} fixes the LR decay period for every "
              f"run; leave it out so each run's schedule decays over its own length "
              f"(--lr-warmup-fraction scales the warmup too)")
    if args.launcher == "none":
        return 0
    if args.launcher == "slurm" and not args.collect_only:
        for p in plans:
            run_dir = out / p.name
            sized = p.__class__(**{**p.__dict__,
                                   "flags": run_flags(p, run_dir, args, resume=True)})
            job = write_sbatch(sized, run_dir / "job.sbatch", run_dir, nodes=args.slurm_nodes,
                               tasks_per_node=args.slurm_tasks_per_node,
                               gpus_per_node=args.slurm_gpus_per_node,
                               cpus_per_task=args.slurm_cpus_per_task, time=args.slurm_time,
                               partition=args.slurm_partition, extra=args.slurm_extra)
            print(f"[ablate] wrote {job}")
            if args.submit:
                sub = subprocess.run(["sbatch", "--parsable", str(job)], cwd=ROOT, check=True,
                                     capture_output=True, text=True)
                job_id = sub.stdout.strip().split(";")[0]
                (run_dir / "job_id").write_text(job_id + "\n")
                print(f"[ablate] submitted {p.name}: job {job_id}", flush=True)
        print(f"[ablate] when the jobs are done: python tools/ablate.py ... --output {out} "
              f"--collect-only")
        return 0

    tpb = None
    if not args.bpb_input:
        try:
            tpb = tokens_per_byte(plans[0].flags)
            print(f"[ablate] {tpb[0]:.4f} tokens/byte in {tpb[1]}")
        except (ValueError, OSError) as e:
            print(f"[ablate] no BPB from validation loss: {e}")
    rows, curves = [], {}
    failed = False
    for p in plans:
        run_dir = out / p.name
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = {}
        evaluate = bool(args.bpb_input or args.eval_tasks)
        if args.collect_only and evaluate and run_done(p, run_dir):
            try:  # e.g. SLURM runs: evaluate the final checkpoints here, once
                post_eval(run_dir, args, skip_done=True)
            except subprocess.CalledProcessError as e:
                extra["status"] = f"eval failed: {_tail(e)}"
                failed = True
        if not args.collect_only:
            for stale in ("bpb.json", "lm_eval.json"):  # scores of an earlier run's checkpoint
                (run_dir / stale).unlink(missing_ok=True)
            extra = run_local(p, run_dir, run_flags(p, run_dir, args), args)
            if extra["status"] == "ok" and evaluate:
                try:
                    post_eval(run_dir, args)
                except subprocess.CalledProcessError as e:
                    extra["status"] = f"eval failed: {_tail(e)}"
            if extra["status"] != "ok":
                failed = True
                print(f"[ablate] {p.name}: {extra['status']} (log {run_dir / 'train.log'})")
                if not args.keep_going:
                    break
        row, curves[p.name] = collect(p, run_dir, extra, tpb)
        rows.append(row)
        print(f"[ablate] {p.name}: {row['status']}, validation loss {row['val_loss']:.4f}")
    write_table(rows, out)
    plot(rows, curves, out)
    print(f"[ablate] wrote {out / 'results.csv'}, {out / 'results.md'}, "
          f"{out / 'loss_vs_tokens.png'}, {out / 'final_scores.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
