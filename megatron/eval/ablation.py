"""Fixed-budget architecture ablations: the grid of variants, sizing each run to one budget,
parsing pretrain_gpt.py's logs, and SLURM job files. tools/ablate.py is the command line.

Budget accounting: FLOPs per token of a variant = megatron.trainer.metrics.flops_per_token
(6 N + 12 L h s, with N from count_parameters: GLU's third matrix, biases, tied or untied output
layer and learned positions are counted, so e.g. --glu-activation swiglu (4h FFN, fc1 doubled) and learned vs
rotary positions cost different amounts per token). A run of S steps of global batch G and
sequence s costs S x G x s x flops_per_token; S is rounded to the nearest integer and the
realised budget is reported next to the requested one (and refused if it misses by more than
the tolerance, 2% by default).
"""
from __future__ import annotations

import itertools
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# flags that set the run length or schedule's length: the budget sets the length instead
LENGTH_FLAGS = {"--train-iters": 1, "--train-samples": 1, "--exit-interval": 1}

_NUM = r"([0-9.eE+-]+|nan|inf)"
TRAIN_LINE = re.compile(r"iteration (\d+)/(\d+) \|.*?consumed tokens (\d+) \|.*?\| loss "
                        + _NUM + r" \|")
EVAL_LINE = re.compile(r"(validation|test) loss at iteration (\d+) \| lm loss " + _NUM
                       + r" \| lm loss PPL " + _NUM)


# ---------------------------------------------------------------------------------------------
# grid


@dataclass
class Budget:
    kind: str  # "flops" or "tokens"
    value: float
    note: str = ""  # how a GPU-hours budget was converted

    @property
    def label(self) -> str:
        return f"{self.value:.3g} {self.kind}"


def parse_budget(spec: dict) -> Budget:
    """{"flops": 2e12} | {"tokens": 1e6} | {"gpu_hours": 100, "gpus"?: 1, "peak_tflops": 989,
    "mfu": 0.4}; GPU hours become FLOPs = hours x 3600 x peak x MFU (an assumption: say so)."""
    if "flops" in spec:
        return Budget("flops", float(spec["flops"]))
    if "tokens" in spec:
        return Budget("tokens", float(spec["tokens"]))
    if "gpu_hours" in spec:
        peak = float(spec.get("peak_tflops", 989.0)) * 1e12  # H100 SXM dense bf16
        mfu = float(spec.get("mfu", 0.4))
        flops = float(spec["gpu_hours"]) * 3600 * peak * mfu
        return Budget("flops", flops, note=f"{spec['gpu_hours']} GPU hours at "
                      f"{peak / 1e12:g} TFLOP/s peak x {mfu:g} MFU (assumed) = {flops:.3g} FLOPs")
    raise ValueError(f"budget needs one of flops, tokens or gpu_hours: {spec}")


def vary_to_variants(vary: Sequence) -> dict[str, list[str]]:
    """["position-embedding-type=learned_absolute,rope", "glu-activation=default,swiglu"] ->
    the cross product, {"learned_absolute_default": [...flags], ...}. A value `default` leaves
    the flag out (the base's or trainer's default); `on`/`off` add or leave out a switch;
    `LABEL:VALUE` names the value in the variant name (e.g. `gelu:default`). An axis may also be
    a mapping (grid files) of labels to flag lists, for values that take several flags:
    {"causal": [], "prefix": ["--prefix-lm", "--loss-on-targets-only"]}."""
    axes = []
    for item in vary:
        if isinstance(item, dict):
            if not item:
                raise ValueError("vary: an empty mapping")
            axes.append([(None, (str(label), [str(f) for f in (flags or [])]))
                         for label, flags in item.items()])
            continue
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--vary {item!r}: expected FLAG=v1,v2,... (or, in a grid file, "
                             f"a mapping LABEL: [flags])")
        flag, values = item.split("=", 1)
        flag = "--" + flag.lstrip("-")
        axes.append([(flag, v) for v in values.split(",") if v != ""])
    variants = {}
    for combo in itertools.product(*axes):
        flags, name = [], []
        for flag, v in combo:
            if flag is None:  # a mapping's LABEL: [flags]
                name.append(v[0])
                flags += v[1]
                continue
            label, v = v.split(":", 1) if ":" in v else (None, v)
            if label:
                if v == "off" or v == "default":
                    pass
                elif v == "on":
                    flags.append(flag)
                else:
                    flags += [flag, v]
                name.append(label)
            elif v == "off":
                name.append(f"no-{flag[2:]}")
            elif v == "on":
                flags.append(flag)
                name.append(flag[2:])
            elif v == "default":
                name.append(f"{flag[2:]}-default")
            else:
                flags += [flag, v]
                name.append(v)
        variants["_".join(name) or "base"] = flags
    return variants


def load_grid(path: Optional[str], base: Sequence[str], vary: Sequence[str],
              budgets: Sequence[dict]) -> dict:
    """The grid from a JSON/YAML file and/or the command line (command line adds to the file)."""
    grid = {"base": [], "variants": {}, "budgets": []}
    if path:
        text = Path(path).read_text()
        if path.endswith((".yaml", ".yml")):
            import yaml
            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
        grid["base"] = [str(x) for x in spec.get("base", [])]
        grid["variants"] = {k: [str(x) for x in v] for k, v in spec.get("variants", {}).items()}
        if spec.get("vary"):
            grid["variants"].update(vary_to_variants(spec["vary"]))
        b = spec.get("budget", spec.get("budgets", []))
        grid["budgets"] = b if isinstance(b, list) else [b]
    grid["base"] += list(base)
    if vary:
        grid["variants"].update(vary_to_variants(vary))
    grid["budgets"] += list(budgets)
    if not grid["variants"]:
        grid["variants"] = {"base": []}
    if not grid["budgets"]:
        raise ValueError("no budget: give --budget-flops/--budget-tokens/--budget-gpu-hours "
                         "or a `budget` in the grid file")
    grid["budgets"] = [parse_budget(b) if isinstance(b, dict) else b for b in grid["budgets"]]
    for name in grid["variants"]:
        if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", name):
            raise ValueError(f"variant name {name!r}: use letters, digits and _ . + = -")
    return grid


def strip_length_flags(flags: Sequence[str]) -> list[str]:
    out, skip = [], 0
    for f in flags:
        if skip:
            skip -= 1
            continue
        if f in LENGTH_FLAGS:
            skip = LENGTH_FLAGS[f]
            continue
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------
# sizing


@dataclass
class RunPlan:
    name: str
    variant: str
    flags: list  # full pretrain_gpt.py flags, --train-iters included
    budget: Budget
    n_params: int
    n_params_non_embedding: int
    flops_per_token: float
    seq_length: int
    global_batch: int
    steps: int
    tokens: int
    realised_flops: float
    budget_error_pct: float
    info: dict = field(default_factory=dict)


def model_stats(flags: Sequence[str], world_size: int = 1):
    """(cfg with the padded vocabulary, total params, non-embedding params, FLOPs/token, gbs)."""
    from megatron.config.cli import parse_config
    from megatron.data.tokenizers import build_tokenizer, padded_vocab_size
    from megatron.trainer.metrics import count_parameters, flops_per_token

    cfg = parse_config(list(flags))
    d, m, p = cfg.data, cfg.model, cfg.parallel
    tok = build_tokenizer(d.tokenizer_type or "ByteLevelTokenizer",
                          tokenizer_model=d.tokenizer_model,
                          tokenizer_name_or_path=d.tokenizer_name_or_path,
                          vocab_file=d.vocab_file, merge_file=d.merge_file,
                          vocab_size=d.vocab_size)
    tp = p.tensor_model_parallel_size
    cfg = cfg.replace(model={"vocab_size": padded_vocab_size(
        tok.vocab_size, m.make_vocab_size_divisible_by, tp, m.pad_vocab_size_to)})
    m = cfg.model
    total = count_parameters(m)
    emb = m.vocab_size * m.hidden_size * (2 if m.untie_embeddings_and_output_weights else 1)
    if m.position_embedding_type == "learned_absolute":
        emb += m.max_positions * m.hidden_size
    gbs = cfg.training.global_batch_size
    if gbs is None:
        dp = max(1, world_size // (tp * p.pipeline_model_parallel_size))
        gbs = cfg.training.micro_batch_size * dp
    return cfg, total, total - emb, flops_per_token(m), gbs


def size_run(name: str, variant: str, base: Sequence[str], variant_flags: Sequence[str],
             budget: Budget, world_size: int = 1, tolerance: float = 0.02) -> RunPlan:
    flags = strip_length_flags(list(base) + list(variant_flags))
    cfg, total, non_emb, fpt, gbs = model_stats(flags, world_size)
    seq = cfg.model.seq_length
    if cfg.training.rampup_batch_size:
        raise ValueError("--rampup-batch-size: ablation runs are sized in whole steps of one "
                         "global batch; leave the rampup out of the grid")
    tokens_per_step = gbs * seq
    if budget.kind == "flops":
        exact = budget.value / (fpt * tokens_per_step)
    else:
        exact = budget.value / tokens_per_step
    steps = max(1, round(exact))
    tokens = steps * tokens_per_step
    realised = tokens * fpt
    target = budget.value if budget.kind == "flops" else budget.value * fpt
    err = 100.0 * (realised / target - 1.0) if budget.kind == "flops" else \
        100.0 * (tokens / budget.value - 1.0)
    if abs(err) > 100 * tolerance:
        raise ValueError(
            f"{name}: {budget.label} is {exact:.2f} steps of {tokens_per_step} tokens "
            f"({fpt:.4g} FLOPs/token); rounding to {steps} steps misses the budget by "
            f"{err:+.2f}% (> {100 * tolerance:g}%). Raise the budget or lower the global batch.")
    return RunPlan(name=name, variant=variant, flags=flags + ["--train-iters", str(steps)],
                   budget=budget, n_params=total, n_params_non_embedding=non_emb,
                   flops_per_token=fpt, seq_length=seq, global_batch=gbs, steps=steps,
                   tokens=tokens, realised_flops=realised, budget_error_pct=err)


def plan_grid(grid: dict, world_size: int = 1, tolerance: float = 0.02) -> list[RunPlan]:
    plans = []
    many = len(grid["budgets"]) > 1
    for budget in grid["budgets"]:
        for variant, vflags in grid["variants"].items():
            name = f"{variant}@{budget.value:.3g}{budget.kind[0]}" if many else variant
            plans.append(size_run(name, variant, grid["base"], vflags, budget, world_size,
                                  tolerance))
    return plans


# ---------------------------------------------------------------------------------------------
# logs


def parse_log(text: str) -> dict:
    """Train loss vs tokens and validation/test loss vs tokens from pretrain_gpt.py's stdout."""
    train, tokens_at = [], {}
    for it, total, tok, loss in TRAIN_LINE.findall(text):
        train.append((int(it), int(tok), float(loss)))
        tokens_at[int(it)] = int(tok)
    evals = {"validation": [], "test": []}
    for split, it, loss, ppl in EVAL_LINE.findall(text):
        evals[split].append((int(it), tokens_at.get(int(it)), float(loss), float(ppl)))
    return {"train": train, "validation": evals["validation"], "test": evals["test"]}


# ---------------------------------------------------------------------------------------------
# BPB


def tokens_per_byte(flags: Sequence[str], max_documents: int = 2000) -> tuple[float, str]:
    """Tokens per UTF-8 byte of the first --data-path dataset, from its first `max_documents`
    documents detokenized (an estimate for the validation split: same corpus, same tokenizer)."""
    import numpy as np
    from megatron.config.cli import parse_config
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.data.tokenizers import build_tokenizer

    cfg = parse_config(list(flags))
    d = cfg.data
    paths = [p for p in (d.data_path or []) if not _is_number(p)]
    if not paths:
        raise ValueError("no --data-path: cannot estimate tokens per byte")
    tok = build_tokenizer(d.tokenizer_type or "ByteLevelTokenizer",
                          tokenizer_model=d.tokenizer_model,
                          tokenizer_name_or_path=d.tokenizer_name_or_path,
                          vocab_file=d.vocab_file, merge_file=d.merge_file,
                          vocab_size=d.vocab_size)
    ds = IndexedDataset(paths[0])
    n_tok = n_bytes = 0
    eod = getattr(tok, "eod", None)
    for i in range(min(len(ds), max_documents)):
        ids = np.asarray(ds[i]).tolist()
        n_tok += len(ids)
        ids = [t for t in ids if t != eod]
        n_bytes += len(tok.detokenize(ids).encode("utf-8"))
    return n_tok / max(n_bytes, 1), f"{paths[0]} ({min(len(ds), max_documents)} documents)"


def _is_number(s) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def bpb_from_loss(loss: float, tokens_per_byte_: float) -> float:
    """Bits per byte = nats per token / ln 2 x tokens per byte."""
    return loss / math.log(2) * tokens_per_byte_


# ---------------------------------------------------------------------------------------------
# SLURM


SBATCH_TEMPLATE = """#!/bin/bash
# Ablation run {name} ({budget}; {steps} steps of {gbs} x {seq} tokens, {fpt:.4g} FLOPs/token,
# realised {realised:.4g} FLOPs, {err:+.2f}% of the budget). Written by tools/ablate.py.
#   sbatch {path}   (from the repository root)
#SBATCH --job-name=abl-{name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={tasks}
{gpus}#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --signal=USR1@{signal}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={log_dir}/%x-%j.out
{extra}set -eu
cd "${{SLURM_SUBMIT_DIR}}"
source examples/slurm/common.sh
export LOG_DIR={log_dir}
ARGS=(
{args}
)
gpt3d_train "${{ARGS[@]}}"
"""


def write_sbatch(plan: RunPlan, path: Path, run_dir: Path, *, nodes: int = 1,
                 tasks_per_node: int = 1, gpus_per_node: int = 0, cpus_per_task: int = 1,
                 time: str = "01:00:00", partition: Optional[str] = None,
                 extra: Sequence[str] = (), signal_s: int = 120) -> Path:
    """One sbatch per run with common.sh's conventions (srun one task per GPU, preemption with
    save + requeue + resume from --load run_dir/checkpoints, per-run logs in run_dir)."""
    header_extra = "".join(f"#SBATCH {e}\n" for e in ([f"--partition={partition}"] if partition
                                                      else []) + list(extra))
    flags = plan.flags
    lines = []
    for i in range(0, len(flags), 6):
        lines.append("  " + " ".join(shlex.quote(f) for f in flags[i:i + 6]))
    text = SBATCH_TEMPLATE.format(
        name=plan.name, budget=plan.budget.label, steps=plan.steps, gbs=plan.global_batch,
        seq=plan.seq_length, fpt=plan.flops_per_token, realised=plan.realised_flops,
        err=plan.budget_error_pct, path=path, nodes=nodes, tasks=tasks_per_node,
        gpus=f"#SBATCH --gpus-per-node={gpus_per_node}\n" if gpus_per_node else "",
        cpus=cpus_per_task, time=time, signal=signal_s, log_dir=shlex.quote(str(run_dir)),
        extra=header_extra, args="\n".join(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
